"""Scenario 6 (the default local store): credentials meant for a team server never reach a local
SQLite store, and a relative store path is fixed when a fit starts, so a shipper still sending
after ``fit()`` returned does not follow the caller into another folder."""

from __future__ import annotations

import os
import subprocess
import sys

from testsupport.settings import tiny

SERVER_PASSWORD = "team-server-pw-1"
FIT = [*tiny(num_samples=8, width=2), "plugins.disabled=['progress', 'analytics']"]


def test_server_credentials_in_secrets_leave_a_local_store_working(tmp_path, report_row):
    from mlflow import MlflowClient

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / ".secrets.toml").write_text(
        f"[default.mlflow]\nusername = 'alice'\npassword = '{SERVER_PASSWORD}'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SEGTRACK_"))}
    out = subprocess.run(
        [sys.executable, "-m", "segtrack", "train", *[a for s in FIT for a in ("--set", s)]],
        cwd=tmp_path,
        env={**env, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "MLflow" not in out.stderr, out.stderr[-3000:]  # nothing went wrong
    # the first fit into a new SQLite store returns once its shipper created the store and sent the
    # run (drain_timeout 0 otherwise): reading it at once, as a user would, neither races MLflow's
    # first migration nor misses a point
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert len(client.get_metric_history(runs[0].info.run_id, "val_dice")) == 2
    assert SERVER_PASSWORD not in out.stdout + out.stderr
    report_row(
        scenario="mlflow.username/password in .secrets.toml, default local SQLite store",
        runs=1,
        faults=0,
        expected="run stored, FINISHED",
        found=f"{len(runs)} run, {runs[0].info.status}",
        duplicates="-",
        result="pass",
    )


def test_a_database_uri_gains_no_server_credentials(monkeypatch):
    from segtrack_mlflow.uri import connect_uri

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SERVER_PASSWORD)
    for uri in ("sqlite:///mlflow.db", "sqlite:////abs/mlflow.db", "postgresql://app@db/mlflow"):
        assert connect_uri(uri) == uri
    assert connect_uri("postgresql://app:***@db/mlflow") == f"postgresql://app:{SERVER_PASSWORD}@db/mlflow"


def test_a_relative_store_stays_in_the_folder_the_fit_started_in(settings_factory, tmp_path, monkeypatch, report_row):
    """The store cannot be written during the fit (a folder stands where the database goes), so every
    record is still spooled when the caller moves to another folder; then the store is freed."""
    from mlflow import MlflowClient

    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.plugins.manager import get_plugin_manager, installed_entry_points

    start, later = tmp_path / "a", tmp_path / "b"
    start.mkdir()
    later.mkdir()
    monkeypatch.chdir(start)
    (start / "mlflow.db").mkdir()
    settings = settings_factory("mlflow.drain_timeout=0", "mlflow.log_every_n_steps=0")
    disabled = ["progress", *(name for name in installed_entry_points() if name != "mlflow")]
    manager = get_plugin_manager(settings, disabled=disabled)
    result = SegmentationTrainer(settings, plugin_manager=manager).fit()
    assert result.status == "completed"
    monkeypatch.chdir(later)
    (start / "mlflow.db").rmdir()
    import segtrack_mlflow

    assert segtrack_mlflow.wait_sent(start / ".segtrack" / "spool", 90)
    assert not (later / "mlflow.db").exists() and not (later / "mlartifacts").exists()
    client = MlflowClient(f"sqlite:///{start / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert len(client.get_metric_history(runs[0].info.run_id, "val_dice")) == 2
    report_row(
        scenario="relative sqlite:///mlflow.db, os.chdir after fit() while the shipper process still sends",
        runs=1,
        faults=1,
        expected="run in the fit's folder",
        found=f"{len(runs)} run in the fit's folder, none in the other",
        duplicates="-",
        result="pass",
    )
