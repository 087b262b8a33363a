"""The promises under loops that are not segtrack's: a hand-written loop (FitSession) and Lightning
(SegtrackCallback), each SIGKILLed after an epoch's metrics were logged, then resumed while the
MLflow server is down, then the server back: one FINISHED run, each epoch once, the ONNX model
logged, a raising plugin reported and survived, and no wait on the dead server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testsupport.mlflow_reads import epochs_of

HERE = Path(__file__).parent
EPOCHS = 6


def _fit(loop: str, cwd: Path, uri: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(HERE / "any_loop_chaos.py"), "--loop", loop, "--epochs", str(EPOCHS), *extra]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("loop", ["own", pytest.param("lightning", marks=pytest.mark.slow)])
def test_a_loop_killed_then_resumed_through_an_outage_gives_one_run(loop, tmp_path, own_server, report_row):
    pytest.importorskip("lightning") if loop == "lightning" else None
    from mlflow import MlflowClient

    import segtrack_mlflow

    killed = _fit(loop, tmp_path, own_server.uri, "--kill-after-epoch", "2")
    assert killed.returncode == -9, killed.stderr[-3000:]
    own_server.stop()  # the server goes down; the resumed fit must neither wait for it nor lose anything
    started = time.monotonic()
    resumed = _fit(loop, tmp_path, own_server.uri)
    resumed_s = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "plugin 'broken' failed in hook 'epoch_end'" in resumed.stderr
    assert "Traceback" not in resumed.stderr.replace("Traceback (most recent call last)", "", 1)  # the plugin's only
    own_server.start()
    assert segtrack_mlflow.wait_sent(tmp_path / ".segtrack" / "spool", 180)

    client = MlflowClient(own_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["segtrack.loop"] == loop
    expected = found = duplicates = 0
    for key in ("train_loss", "val_dice"):
        epochs = epochs_of(client, run.info.run_id, key)
        expected, found = expected + EPOCHS, found + len(set(epochs))
        duplicates += len(epochs) - len(set(epochs))
        assert epochs == list(range(1, EPOCHS + 1)), (key, epochs)
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert len(models) == 1
    report_row(
        scenario=f"{loop} loop: SIGKILL after epoch 3, resumed with the server down ({resumed_s:.0f} s)",
        runs=1,
        faults=2,
        expected=expected,
        found=found,
        duplicates=duplicates,
        result="pass",
    )
