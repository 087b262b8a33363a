"""ExperimentTracker on its own, against a real SQLite store (the original plan's T1)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from segtrack_mlflow import ExperimentTracker
from testsupport.mlflow_reads import artifacts, history, only_run


def test_tracker_uses_the_local_backend_and_creates_the_experiment(sqlite_uri):
    tracker = ExperimentTracker(sqlite_uri, experiment="fresh")
    run_id = tracker.start_run("first", tags={"team": "seg"})
    client = MlflowClient(sqlite_uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "fresh"
    assert run.info.run_name == "first" and run.data.tags["team"] == "seg" and run.info.status == "RUNNING"
    tracker.end_run()
    assert client.get_run(run_id).info.status == "FINISHED"


def test_tracker_logs_epoch_metrics(sqlite_uri):
    with ExperimentTracker(sqlite_uri) as tracker:
        run_id = tracker.start_run()
        tracker.log_epoch_metrics({"train_loss": 0.9, "val_dice": 0.4, "lr": 0.01}, epoch=0)
        tracker.log_epoch_metrics({"train_loss": 0.7, "val_dice": 0.6, "lr": 0.005}, epoch=1)
    client = MlflowClient(sqlite_uri)
    assert history(client, run_id, "val_dice") == [(0, 0.4), (1, 0.6)]
    assert history(client, run_id, "lr") == [(0, 0.01), (1, 0.005)]


def test_tracker_logs_model_info_test_hash_and_artifact(sqlite_uri, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with ExperimentTracker(sqlite_uri) as tracker:
        run_id = tracker.start_run()
        tracker.log_model_info({"name": "unet", "width": 8, "depth": 2})
        tracker.log_test_set_hash("ab" * 32)
        tracker.log_artifact(tmp_path / "notes.txt", "docs")
    run = MlflowClient(sqlite_uri).get_run(run_id)
    assert run.data.params == {"model.name": "unet", "model.width": "8", "model.depth": "2"}
    assert run.data.tags["test_data_sha256"] == "ab" * 32
    assert artifacts(MlflowClient(sqlite_uri), run_id) == ["docs/notes.txt"]


def test_long_and_secret_params(sqlite_uri):
    long_value = "x" * 7000
    with ExperimentTracker(sqlite_uri) as tracker:
        run_id = tracker.start_run()
        tracker.log_params(
            {
                "data": {"note": long_value, "api_key": "k-123"},
                "mlflow": {"password": "hunter2", "tracking_uri": "http://u:pw@host:5000"},
            }
        )
        tracker.log_params({"data": {"note": long_value}})  # logging the same params again is harmless
    client = MlflowClient(sqlite_uri)
    params = client.get_run(run_id).data.params
    assert set(params) == {"data.note", "mlflow.tracking_uri"}
    assert len(params["data.note"]) <= 6000 and "truncated" in params["data.note"]
    assert params["mlflow.tracking_uri"] == "http://u:***@host:5000"
    assert artifacts(client, run_id) == ["params/data.note.txt"]
    local = client.download_artifacts(run_id, "params/data.note.txt", ".")
    assert __import__("pathlib").Path(local).read_text() == long_value


def test_tracker_marks_failed_runs(sqlite_uri):
    tracker = ExperimentTracker(sqlite_uri)
    with pytest.raises(ValueError), tracker:
        tracker.start_run()
        raise ValueError("boom")
    assert only_run(MlflowClient(sqlite_uri)).info.status == "FAILED"


def test_bad_experiment_name_is_refused(sqlite_uri):
    from segtrack import ConfigError

    with pytest.raises(ConfigError, match="non-empty experiment name"):
        ExperimentTracker(sqlite_uri, experiment=" ")
