"""Each source (SQLite, PostgreSQL, REST server, file store) loads the same tables MLflow reports."""

from __future__ import annotations

import math

import pytest

from segtrack_analytics import RunAnalytics
from testsupport.analytics_stores import assert_matches_mlflow, populate


def test_sqlite_store_is_read_directly(sqlite_uri):
    populate(sqlite_uri)
    analytics = RunAnalytics(sqlite_uri, cache_dir=None)
    stats = analytics.load_experiment_runs("synthetic")
    assert stats.runs == 7 and stats.metric_points == 6 * 9
    assert_matches_mlflow(analytics, sqlite_uri, "synthetic")


def test_nan_and_inf_stay_nan_and_inf(sqlite_uri):
    populate(sqlite_uri)
    analytics = RunAnalytics(sqlite_uri, cache_dir=None)
    analytics.load_experiment_runs("synthetic")
    rows = analytics.query("SELECT run_name, \"metrics.odd\" FROM runs WHERE run_name LIKE 'run-%'").to_pylist()
    odd = {r["run_name"]: r["metrics.odd"] for r in rows}
    assert math.isnan(odd["run-1"]) and odd["run-2"] == math.inf and odd["run-3"] == 3.0
    history = (
        analytics.query(
            "SELECT value FROM metrics m JOIN runs r USING (run_id) WHERE r.run_name = 'run-1' AND key = 'odd'"
        )
        .column("value")
        .to_pylist()
    )
    assert math.isnan(history[0])


def test_postgresql_store_is_read_directly(postgres_uri):
    populate(postgres_uri, experiment="pg")
    analytics = RunAnalytics(postgres_uri, cache_dir=None)
    assert analytics.load_experiment_runs("pg").runs == 7
    assert_matches_mlflow(analytics, postgres_uri, "pg")


def test_tracking_server_is_read_over_rest(sqlite_uri, tmp_path):
    from testsupport.mlflow_server import MlflowServer

    populate(sqlite_uri, experiment="rest")
    server = MlflowServer(sqlite_uri, tmp_path).start()
    try:
        analytics = RunAnalytics(server.uri, cache_dir=None)
        assert analytics.load_experiment_runs("rest").runs == 7
        assert_matches_mlflow(analytics, server.uri, "rest")
    finally:
        server.stop()


def test_legacy_file_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    populate(uri, experiment="files")
    analytics = RunAnalytics(uri, cache_dir=None)
    assert analytics.load_experiment_runs("files").runs == 7
    assert_matches_mlflow(analytics, uri, "files")


def test_unknown_store_kind_is_explained():
    from segtrack import ConfigError

    with pytest.raises(ConfigError, match="malformed or of an unknown kind"):
        RunAnalytics("ftp://example/x")
