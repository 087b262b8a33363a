"""Scenario 3: torchrun with 2 CPU processes (gloo) and MLflow tracking: one run (or parent and
folds), metrics from rank 0 only, checkpoints written once; a dying rank fails the job cleanly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from testsupport.mlflow_reads import epochs_of
from testsupport.ports import free_port

KEYS = ("train_loss", "val_loss", "val_dice", "val_iou", "lr")
SETS = [
    "train.epochs=3",
    "train.batch_size=2",
    "data.num_samples=12",
    "data.image_size=16",
    "model.width=2",
    "model.depth=1",
    "export.enabled=false",
    "mlflow.drain_timeout=60",  # the run is read back right after the command
    "mlflow.sample_overlays=0",
    "plugins.disabled=['progress', 'analytics']",
]


def _torchrun(cwd, uri, *args, script=None):
    target = [script] if script else ["-m", "segtrack"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *target,
        *[a for s in SETS for a in ("--set", s)],
        *args,
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _points(client, run_id):
    return {k: epochs_of(client, run_id, k) for k in KEYS}


@pytest.mark.slow  # make test is at its 10-minute budget: `make reliability` runs it
def test_fit_and_cv_under_torchrun(tmp_path, sqlite_uri, report_row):
    from mlflow import MlflowClient

    out = _torchrun(tmp_path, sqlite_uri, "train")
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(sqlite_uri)
    experiment_id = client.get_experiment_by_name("segtrack").experiment_id
    (run,) = client.search_runs([experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["segtrack.world_size"] == "2"
    assert _points(client, run.info.run_id) == {k: [1, 2, 3] for k in KEYS}  # rank 0 only: each step once
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]

    out = _torchrun(tmp_path, sqlite_uri, "cv", "--folds", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    runs = client.search_runs([experiment_id], filter_string="tags.`segtrack.cv_id` != ''")
    parents = [r for r in runs if r.data.tags.get("segtrack.role") == "cv-parent"]
    folds = [r for r in runs if "segtrack.fold" in r.data.tags]
    assert len(parents) == 1 and len(folds) == 2
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in folds)
    for fold in folds:
        assert _points(client, fold.info.run_id) == {k: [1, 2, 3] for k in KEYS}
    report_row(
        scenario="torchrun 2 ranks: fit + 2-fold CV",
        runs=4,
        faults=0,
        expected=3 * 5 * 3,
        found=3 * 5 * 3,
        duplicates=0,
        result="pass; all ranks exit 0",
    )


DYING_RANK = """
import os, sys, threading, signal, time
from pathlib import Path
from segtrack.cli import main

def die_mid_fit():  # once rank 0 has finished an epoch (its last.pt exists), whatever the load
    while not Path("checkpoints/last.pt").exists():
        time.sleep(0.05)
    time.sleep(float(os.environ["DIE_AFTER"]))
    os.kill(os.getpid(), signal.SIGKILL)

if os.environ["RANK"] == "1":
    threading.Thread(target=die_mid_fit, daemon=True).start()
sys.exit(main(["train", *sys.argv[1:]]))
"""


def test_a_dying_rank_fails_the_job_and_the_run(tmp_path, sqlite_uri, report_row):
    from mlflow import MlflowClient

    (tmp_path / "dying.py").write_text(DYING_RANK)
    os.environ["DIE_AFTER"] = "1.5"
    try:
        out = _torchrun(tmp_path, sqlite_uri, "--set", "train.epochs=400", script="dying.py")
    finally:
        del os.environ["DIE_AFTER"]
    assert out.returncode != 0
    client = MlflowClient(sqlite_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id])
    assert run.info.status == "FAILED", (run.info.status, out.stderr[-3000:])
    assert client.get_metric_history(run.info.run_id, "val_dice")  # it died mid-fit, after logging
    for path in (tmp_path / "checkpoints").iterdir():
        torch.load(path, weights_only=True)  # nothing half-written
    report_row(
        scenario="torchrun: rank 1 SIGKILLed mid-fit",
        runs=1,
        faults=1,
        expected="-",
        found="-",
        duplicates=0,
        result="pass; job exits non-zero, run FAILED",
    )


EARLY_STOP = """
import sys
from segtrack import SegmentationTrainer, hookimpl, load_settings

class StopAfterFirstEpoch:
    name = "early_stop"

    @hookimpl
    def epoch_end(self, trainer, epoch):
        trainer.request_stop("no improvement expected")  # hooks run on rank 0 only

settings = load_settings(overrides=[a for a in sys.argv[1:] if a != "--set"])
result = SegmentationTrainer(settings, plugins=[StopAfterFirstEpoch()]).fit()
print("RESULT", result.status, result.epochs_completed, result.stop_reason, flush=True)
"""


def test_a_stop_requested_on_rank_zero_stops_every_rank(tmp_path, sqlite_uri, report_row):
    from mlflow import MlflowClient

    (tmp_path / "early_stop.py").write_text(EARLY_STOP)
    out = _torchrun(tmp_path, sqlite_uri, script="early_stop.py")
    assert out.returncode == 0, out.stderr[-3000:]
    results = sorted(line for line in out.stdout.splitlines() if line.startswith("RESULT"))
    assert results == ["RESULT stopped 1 no improvement expected", "RESULT stopped 1 stop requested on rank 0"]
    client = MlflowClient(sqlite_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id])
    assert run.info.status == "FINISHED"
    assert _points(client, run.info.run_id) == {k: [1] for k in KEYS}  # one epoch, counted from 1
    report_row(
        scenario="torchrun 2 ranks: request_stop on rank 0 after epoch 0",
        runs=1,
        faults=0,
        expected=len(KEYS),
        found=len(KEYS),
        duplicates=0,
        result="pass; both ranks stop, exit 0",
    )
