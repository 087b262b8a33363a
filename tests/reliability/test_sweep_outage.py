"""Scenario: the team's MLflow server is killed and restarted while `segtrack sweep` runs trials:
every trial's metrics arrive exactly once, each trial nested under the study's parent run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testsupport.mlflow_reads import epochs_of
from testsupport.settings import tiny

# ~45 s (a server, three trials, a restart): in `make reliability`, not `make test`
pytestmark = pytest.mark.slow


def _sets(uri: str, *extra: str) -> list[str]:
    space = "sweep.space={'train.lr' = { low = 1e-3, high = 3e-2, log = true }, 'model.width' = [2, 4]}"
    settings = [*tiny(num_samples=12, width=2), f"mlflow.tracking_uri='{uri}'", "mlflow.drain_timeout=60"]
    settings += ["mlflow.sample_overlays=0", "mlflow.checkpoint_policy='none'", space, *extra]
    settings += ["mlflow.quiet_start=0"]  # trials sent while the server is down, not only at the study's end
    return [a for s in settings for a in ("--set", s)]


def _runs(uri: str) -> tuple[list, list]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("segtrack.role") == "study-parent"]
    return parents, [r for r in runs if "segtrack.trial" in r.data.tags]


def test_a_server_outage_during_a_sweep_loses_nothing(tmp_path, sqlite_template):
    """The team's MLflow server is killed while trials run and comes back: every trial's metrics
    arrive exactly once, each trial still nested under the study's parent."""
    import shutil
    import time

    from mlflow import MlflowClient

    from testsupport.mlflow_server import MlflowServer

    shutil.copy(sqlite_template, tmp_path / "server.db")
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path).start()
    work = tmp_path / "work"
    work.mkdir()
    args = [
        "sweep",
        "--study",
        "outage",
        "--trials",
        "3",
        *_sets(server.uri, "train.epochs=4", "sweep.export='none'", "sweep.pruner='none'"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGTRACK_", "MLFLOW_"))}
    sweep = subprocess.Popen(
        [sys.executable, "-m", "segtrack.cli", *args], cwd=work, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not list((work / "checkpoints" / "outage").glob("trial-*")) and time.monotonic() < deadline:
            time.sleep(0.2)  # the first trial is training
        server.stop()
        time.sleep(4)
        server.start()
        _, err = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
    server_uri = server.uri
    try:
        assert sweep.returncode == 0, err[-3000:]
        client = MlflowClient(server_uri)
        parents, trials = _runs(server_uri)
        assert len(parents) == 1 and len(trials) == 3
        for run in trials:
            assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            for key in ("train_loss", "val_loss", "val_dice"):
                steps = epochs_of(client, run.info.run_id, key)
                assert steps == [1, 2, 3, 4], (run.data.tags["segtrack.trial"], key, steps)
        # the study's best so far, one point per trial (step = trial number): none lost in the outage
        steps = sorted(m.step for m in client.get_metric_history(parents[0].info.run_id, "study_best_val_dice"))
        assert steps == [0, 1, 2]
        values = sorted(r.data.metrics["trial_value"] for r in trials)
        assert values == sorted(r.data.metrics["best_val_dice"] for r in trials)
    finally:
        server.stop()
