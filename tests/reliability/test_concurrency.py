"""Scenario 4: 8 fits in parallel, each its own process, logging to one server with a PostgreSQL
backend: 8 runs, every point present once, no process fails."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

KEYS = ("train_loss", "val_loss", "val_dice", "val_iou", "lr")
EPOCHS, STEPS = 3, 3 * 3


@pytest.fixture
def postgres_server(tmp_path):
    pytest.importorskip("psycopg2")
    from testsupport.mlflow_server import MlflowServer
    from testsupport.stores import temporary_postgres_database

    with temporary_postgres_database("segtrack_concurrency") as uri:
        server = MlflowServer(uri, tmp_path).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.mark.slow  # 60 s of 8 parallel fits: in make reliability
def test_eight_parallel_fits_to_one_postgres_backed_server(tmp_path, postgres_server, report_row):
    from mlflow import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": postgres_server.uri, "OMP_NUM_THREADS": "1"}
    procs = []
    for index in range(8):
        folder = tmp_path / f"fit{index}"
        folder.mkdir()
        sets = [
            f"train.epochs={EPOCHS}",
            "train.batch_size=4",
            "data.num_samples=16",
            "data.image_size=16",
            "model.width=2",
            "model.depth=1",
            "export.enabled=false",
            "mlflow.log_every_n_steps=1",
            f"run.name='parallel-{index}'",
            f"train.seed={index}",
            "mlflow.drain_timeout=120",
            "plugins.disabled=['progress', 'analytics']",
        ]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "segtrack", "train", *[a for s in sets for a in ("--set", s)]],
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outputs
    assert not any("WARNING" in out or "ERROR" in out for out in outputs), outputs
    client = MlflowClient(postgres_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id])
    # unique names: <run.name>-<short id>
    assert sorted(r.info.run_name.rsplit("-", 1)[0] for r in runs) == [f"parallel-{i}" for i in range(8)]
    expected = found = duplicates = 0
    for run in runs:
        assert run.info.status == "FINISHED"
        for key, count in [*((k, EPOCHS) for k in KEYS), ("train_loss_step", STEPS)]:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            expected, found, duplicates = (
                expected + count,
                found + len(set(steps)),
                duplicates + len(steps) - len(set(steps)),
            )
    assert (found, duplicates) == (expected, 0)
    report_row(
        scenario="8 parallel fits, one server, PostgreSQL backend",
        runs=8,
        faults=0,
        expected=expected,
        found=found,
        duplicates=duplicates,
        result="pass; no errors",
    )
