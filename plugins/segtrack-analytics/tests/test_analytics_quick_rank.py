"""The rank printed at fit end, read from a local SQLite store with one query, is the one the full
analytics load gives, for either direction, with the fit's own stored row left out."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from segtrack_analytics import RunAnalytics
from segtrack_analytics.quick_rank import rank_in_sqlite_store
from testsupport.analytics_stores import populate


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_quick_rank_is_the_full_loads_rank(sqlite_uri, mode):
    ids = populate(sqlite_uri, experiment="ranked")
    MlflowClient(sqlite_uri).set_tag(ids[3], "segtrack.fit_id", "this-fit")  # this fit, already sent
    analytics = RunAnalytics(sqlite_uri, cache_dir=None)
    analytics.load_experiment_runs("ranked")
    for metric in ("val_dice", "odd"):  # "odd" holds a NaN (left out) and an inf
        for value in (-1.0, 0.25, 0.42, 7.0):
            for fit_id in (None, "this-fit", "another-fit"):
                expected = analytics.rank_of(metric, value, mode, fit_id)
                assert rank_in_sqlite_store(sqlite_uri, "ranked", metric, value, mode, fit_id) == expected


def test_other_stores_and_missing_files_are_left_to_the_full_load(tmp_path):
    assert rank_in_sqlite_store(f"sqlite:///{tmp_path / 'none.db'}", "x", "m", 1.0, "max", None) is None
    assert not (tmp_path / "none.db").exists()
    assert rank_in_sqlite_store("http://127.0.0.1:5000", "x", "m", 1.0, "max", None) is None
    (tmp_path / "other.db").write_bytes(b"not a database at all" * 100)
    assert rank_in_sqlite_store(f"sqlite:///{tmp_path / 'other.db'}", "x", "m", 1.0, "max", None) is None
