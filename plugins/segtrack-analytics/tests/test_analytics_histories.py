"""Metric histories are read when ``metrics`` is first queried, not at a load; then cached."""

from __future__ import annotations

import json

import pytest

from segtrack_analytics import RunAnalytics
from segtrack_analytics.histories import mentions_metrics
from segtrack_analytics.source_sql import SqlSource
from testsupport.analytics_stores import populate

ALL_POINTS = "SELECT run_id, key, step, CAST(value AS VARCHAR) AS v FROM metrics ORDER BY run_id, key, step, v"


@pytest.fixture
def reads(monkeypatch) -> list[int]:
    """One entry per read of the histories from an SQL store."""
    calls: list[int] = []
    original = SqlSource.histories_all

    def counted(self, experiments):
        calls.append(1)
        return original(self, experiments)

    monkeypatch.setattr(SqlSource, "histories_all", counted)
    return calls


def full_read(uri: str, experiment: str = "synthetic") -> list[dict]:
    analytics = RunAnalytics(uri, cache_dir=None)
    analytics.load_experiment_runs(experiment)
    return analytics.query(ALL_POINTS).to_pylist()


def test_summary_and_top_never_read_the_histories(sqlite_uri, tmp_path, reads):
    populate(sqlite_uri)
    analytics = RunAnalytics(sqlite_uri, cache_dir=tmp_path / "cache")
    stats = analytics.load_experiment_runs("synthetic")
    assert analytics.top_models("val_dice", 2).num_rows == 2
    assert analytics.cross_fold_summary("val_dice").num_rows == 1
    assert analytics.query('SELECT count(*) AS n FROM runs WHERE "metrics.val_dice" > 0').column("n")[0].as_py() == 6
    assert stats.metric_points == 6 * 9 and reads == []  # counted in the store, not read
    assert analytics.query("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 6 * 9
    points = analytics.query(ALL_POINTS).to_pylist()
    assert len(reads) == 1  # once per process
    assert points == full_read(sqlite_uri)


def test_histories_read_once_are_cached(sqlite_uri, tmp_path, reads):
    populate(sqlite_uri)
    cache = tmp_path / "cache"
    first = RunAnalytics(sqlite_uri, cache_dir=cache)
    first.load_experiment_runs("synthetic")
    first.wait_for_cache()
    assert json.loads(next(cache.rglob("state.json")).read_text())["metrics"] is None
    first.query("SELECT 1 FROM metrics LIMIT 1")
    first.wait_for_cache()
    assert json.loads(next(cache.rglob("state.json")).read_text())["metrics"]
    warm = RunAnalytics(sqlite_uri, cache_dir=cache)
    stats = warm.load_experiment_runs("synthetic")
    assert stats.from_cache and stats.metric_points == 6 * 9
    assert warm.query(ALL_POINTS).to_pylist() == full_read(sqlite_uri)
    assert len(reads) == 2  # the first process and full_read; the warm one mapped the cache


def test_refresh_before_the_histories_were_read(sqlite_uri, tmp_path):
    from mlflow import MlflowClient

    populate(sqlite_uri)
    cache = tmp_path / "cache"
    RunAnalytics(sqlite_uri, cache_dir=cache).load_experiment_runs("synthetic")
    client = MlflowClient(sqlite_uri)
    new = client.create_run(client.get_experiment_by_name("synthetic").experiment_id).info.run_id
    client.log_metric(new, "val_dice", 0.5, step=3)
    client.set_terminated(new)
    analytics = RunAnalytics(sqlite_uri, cache_dir=cache)
    stats = analytics.load_experiment_runs("synthetic")
    assert (stats.from_cache, stats.reread) == (True, 2)  # the new run and the running one
    analytics.wait_for_cache()
    assert analytics.query(ALL_POINTS).to_pylist() == full_read(sqlite_uri)
    assert analytics.query(f"SELECT step FROM metrics WHERE run_id = '{new}'").to_pylist() == [{"step": 3}]


def test_the_connection_has_both_tables(sqlite_uri):
    populate(sqlite_uri)
    analytics = RunAnalytics(sqlite_uri, cache_dir=None)
    analytics.load_experiment_runs("synthetic")
    assert analytics.con.execute("SELECT count(*) FROM metrics").fetchone() == (6 * 9,)


@pytest.mark.parametrize(
    ("sql", "reads_metrics"),
    [
        ("SELECT * FROM metrics", True),
        ('SELECT * FROM "metrics" m JOIN runs USING (run_id)', True),
        ("select count(*) from METRICS", True),
        ('SELECT "metrics.val_dice" FROM runs', False),
        ("SELECT run_id FROM runs WHERE \"metrics.val_dice\" > 0.5 ORDER BY 'metrics.x'", False),
    ],
)
def test_which_queries_read_the_histories(sql, reads_metrics):
    assert mentions_metrics(sql) is reads_metrics


def test_cached_histories_grow_by_deltas(sqlite_uri, tmp_path, reads):
    from mlflow import MlflowClient

    running = populate(sqlite_uri)[-1]
    client = MlflowClient(sqlite_uri)
    client.set_terminated(running)  # else re-read at every load: the cache would be rewritten whole
    cache = tmp_path / "cache"
    first = RunAnalytics(sqlite_uri, cache_dir=cache)
    first.load_experiment_runs("synthetic")
    first.query("SELECT count(*) FROM metrics")
    first.wait_for_cache()
    new = client.create_run(client.get_experiment_by_name("synthetic").experiment_id).info.run_id
    client.log_metric(new, "val_dice", 0.5, step=3)
    client.set_terminated(new)
    refreshed = RunAnalytics(sqlite_uri, cache_dir=cache)
    refreshed.load_experiment_runs("synthetic")
    refreshed.wait_for_cache()
    state = json.loads(next(cache.rglob("state.json")).read_text())
    warm = RunAnalytics(sqlite_uri, cache_dir=cache)
    assert warm.load_experiment_runs("synthetic").reread == 0
    assert warm.query(ALL_POINTS).to_pylist() == full_read(sqlite_uri)
    assert len(reads) == 2  # the first process and full_read: the refresh read its runs' histories only
    assert (state["deltas"], len(state["metrics"])) == (1, 2)
