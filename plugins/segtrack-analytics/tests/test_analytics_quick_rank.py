"""The ranks printed at fit end and trial end, read from a local SQLite store with one query, are the
ones the full analytics load gives, for either direction, with the fit's (trial's) own stored row
left out."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from segtrack_analytics import RunAnalytics
from segtrack_analytics.quick_rank import rank_in_sqlite_store, study_rank_in_sqlite_store
from testsupport.analytics_stores import populate, populate_study


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


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_quick_study_rank_is_the_full_loads_rank(sqlite_uri, mode):
    populate_study(sqlite_uri)  # trial values 0.3, 0.2, 0.1 (pruned), none (failed), 0.2 (the CV trial)
    analytics = RunAnalytics(sqlite_uri, cache_dir=None)
    analytics.load_experiment_runs("segtrack")
    for trial in (1, 4, 7):  # stored (its own row left out: a tie with trial 1 or 4), or not stored yet
        for value in (0.05, 0.2, 0.25, 0.9):
            expected = analytics.rank_in_study("sid1", trial, value, mode)
            assert study_rank_in_sqlite_store(sqlite_uri, "segtrack", "sid1", trial, value, mode) == expected
    # as `runs sweep` orders them: an equal value ranks behind a lower trial number
    assert analytics.rank_in_study("sid1", 7, 0.2, mode) == (4, 5)  # one better, trials 1 and 4 tie ahead
    assert analytics.rank_in_study("sid1", 4, 0.2, mode) == (3, 4)  # its own stored 0.2 left out
    assert analytics.rank_in_study("sid1", 0, 0.2, mode) == ((1, 4) if mode == "max" else (2, 4))
    assert study_rank_in_sqlite_store(sqlite_uri, "segtrack", "other", 1, 0.2, mode) == (1, 1)
