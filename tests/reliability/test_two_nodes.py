"""Scenario: torchrun across two nodes, simulated by two `torchrun --nnodes 2 --node_rank 0|1`
launches on 127.0.0.1, each in its own working folder (nothing shared but the network, the MLflow
store and, where said, the checkpoint folder).

- shared checkpoint.dir: a fit, then `--resume auto` with rank 0 moved to the other node: one
  MLflow run, every epoch logged once, the resumed rank 0 spooling on its own node;
- node-local checkpoint.dir: `--resume auto` finds last.pt on one node only: both ranks stop
  before training with one sentence, no hang, no divergence; non-zero ranks never create
  checkpoint or export folders.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testsupport.mlflow_reads import epochs_of
from testsupport.ports import free_port

# ~80 s of torchrun launches: in `make reliability`, not `make test` (its 10-minute budget)
pytestmark = pytest.mark.slow

KEYS = ("train_loss", "val_loss", "val_dice")
SETS = [
    "train.batch_size=2",
    "data.num_samples=12",
    "data.image_size=16",
    "model.width=2",
    "model.depth=1",
    "mlflow.drain_timeout=60",  # the run is read back right after the command
    "mlflow.sample_overlays=0",
    "plugins.disabled=['progress', 'analytics']",
]


def _two_nodes(folders: list[Path], uri: str, rank0_on: int, *args: str) -> list[subprocess.CompletedProcess]:
    """Both nodes' launches, node rank 0 in ``folders[rank0_on]``; waits for both (killing what
    this test started if one hangs)."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    launches = []
    for node_rank in (0, 1):
        folder = folders[rank0_on if node_rank == 0 else 1 - rank0_on]
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "segtrack", "train", *[a for s in SETS for a in ("--set", s)], *args,
        ]  # fmt: skip
        launches.append(
            subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    results = []
    try:
        for process in launches:
            out, err = process.communicate(timeout=240)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:
        for process in launches:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def _nodes(tmp_path: Path) -> list[Path]:
    folders = [tmp_path / "node-a", tmp_path / "node-b"]
    for folder in folders:
        folder.mkdir()
    return folders


def test_shared_checkpoints_resume_on_the_other_node_continues_the_run(tmp_path, sqlite_uri):
    from mlflow import MlflowClient

    folders = _nodes(tmp_path)
    shared = tmp_path / "shared-checkpoints"
    first = _two_nodes(folders, sqlite_uri, 0, "--set", "train.epochs=2", "--set", f"checkpoint.dir='{shared}'")
    assert all(r.returncode == 0 for r in first), first[0].stderr[-3000:] + first[1].stderr[-3000:]
    assert not (folders[1] / "checkpoints").exists() and not (folders[1] / "exports").exists()

    resumed = _two_nodes(
        folders, sqlite_uri, 1, "--set", "train.epochs=4", "--set", f"checkpoint.dir='{shared}'", "--resume", "auto"
    )
    assert all(r.returncode == 0 for r in resumed), resumed[0].stderr[-3000:] + resumed[1].stderr[-3000:]
    client = MlflowClient(sqlite_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id])
    assert run.info.status == "FINISHED"
    for key in KEYS:
        assert epochs_of(client, run.info.run_id, key) == [1, 2, 3, 4], key
    # the resumed rank 0 spooled on its own node (node-b), continuing the run by its id
    spools_b = [p for p in (folders[1] / ".segtrack" / "spool").iterdir() if p.is_dir()]  # not the shipper's files
    assert len(spools_b) == 1 and f'"run_id": "{run.info.run_id}"' in (spools_b[0] / "meta.json").read_text()
    assert len([p for p in (folders[0] / ".segtrack" / "spool").iterdir() if p.is_dir()]) == 1
    assert [p.name for p in (folders[1] / "exports").iterdir()] == ["segtrack.onnx"]  # rank 0 exports where it runs


def test_node_local_checkpoints_stop_every_rank_with_one_sentence(tmp_path, sqlite_uri):
    folders = _nodes(tmp_path)
    first = _two_nodes(folders, sqlite_uri, 0, "--set", "train.epochs=2", "--set", "export.enabled=false")
    assert all(r.returncode == 0 for r in first), first[0].stderr[-3000:]
    assert (folders[0] / "checkpoints" / "last.pt").is_file() and not (folders[1] / "checkpoints").exists()

    resumed = _two_nodes(folders, sqlite_uri, 0, "--set", "train.epochs=4", "--resume", "auto")
    for result in resumed:
        assert result.returncode != 0
        assert "the ranks see different checkpoints to resume from" in result.stderr
        assert "checkpoint.dir must be one folder every node shares" in result.stderr
        assert "epoch 3/4" not in result.stderr + result.stdout  # nobody trained
    assert not (folders[1] / "checkpoints").exists()
