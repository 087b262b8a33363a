"""Scenario 9: the shipper process is SIGKILLed again and again while it sends a fit's records to a
real `mlflow server`. The fit starts a new one at its next epoch; every point lands exactly once, in
one run, and the fit itself never notices."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import pytest

from segtrack import hookimpl

KEYS = ("train_loss", "val_loss", "val_dice", "lr")
EPOCHS = 12


class SlowEpochs:
    """Long enough epochs for the shipper to be caught sending."""

    name = "slow_epochs"

    def __init__(self):
        self.steps: set[int] = set()

    @hookimpl
    def train_batch_end(self, step):
        self.steps.add(step.global_step)
        time.sleep(0.03)


def _kill_shippers(state_file, kills: list[int], stop: threading.Event, times: int) -> None:
    import json

    while len(kills) < times and not stop.is_set():
        time.sleep(0.7)
        try:
            pid = json.loads(state_file.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue
        if pid in kills:
            continue  # not restarted yet
        try:
            os.kill(pid, signal.SIGKILL)  # the shipper our fit started (its own state file names it)
            kills.append(pid)
        except ProcessLookupError:
            pass  # it had exited on its own


@pytest.mark.slow  # 30 s: make test is at its 10-minute budget; `make reliability` runs it
def test_shipper_killed_mid_send_loses_and_duplicates_nothing(tmp_path, sqlite_template, report_row, monkeypatch):
    from mlflow import MlflowClient

    from segtrack.config.settings import load_settings
    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.plugins.manager import get_plugin_manager, installed_entry_points
    from segtrack_mlflow.shipper_files import ShipperFiles
    from testsupport.mlflow_server import MlflowServer

    monkeypatch.chdir(tmp_path)
    shutil.copy(sqlite_template, tmp_path / "server.db")
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path).start()
    settings = load_settings(
        overrides=[
            f"train.epochs={EPOCHS}",
            "train.batch_size=4",
            "data.num_samples=48",
            "data.image_size=16",
            "model.width=4",
            "model.depth=1",
            "export.enabled=false",
            f"mlflow.tracking_uri='{server.uri}'",
            "mlflow.log_every_n_steps=1",
            "mlflow.flush_interval=0.2",  # sending most of the time: kills land mid-send
            "mlflow.quiet_start=0",  # (a loopback server would otherwise get nothing until the fit ends)
            "mlflow.drain_timeout=120",
            "mlflow.sample_overlays=0",
        ]
    )
    others = [n for n in ("analytics",) if n in installed_entry_points()]
    slow = SlowEpochs()
    manager = get_plugin_manager(settings, [slow], disabled=["progress", *others])
    state = ShipperFiles((tmp_path / ".segtrack" / "spool").resolve(), server.uri).state
    kills: list[int] = []
    stop = threading.Event()
    chaos = threading.Thread(target=_kill_shippers, args=(state, kills, stop, 5))
    try:
        trainer = SegmentationTrainer(settings, plugin_manager=manager)
        chaos.start()
        result = trainer.fit()
        stop.set()
        chaos.join()
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id])
        assert len(runs) == 1, [r.info.run_name for r in runs]
        (run,) = runs
        steps = len(slow.steps)
        expected = found = duplicates = 0
        for key, count in [*((k, result.epochs_completed) for k in KEYS), ("train_loss_step", steps)]:
            got = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            expected, found, duplicates = expected + count, found + len(set(got)), duplicates + len(got) - len(set(got))
        assert result.status == "completed" and not result.plugin_failures
        assert run.info.status == "FINISHED"
        assert len(kills) >= 3, f"only {len(kills)} shipper(s) killed: the scenario did not happen"
        assert (found, duplicates) == (expected, 0)
        report_row(
            scenario="the shipper process SIGKILLed while sending (a new one started by the fit each time)",
            runs=1,
            faults=len(kills),
            expected=expected,
            found=found,
            duplicates=duplicates,
            result="pass; one run, FINISHED",
        )
    finally:
        stop.set()
        server.stop()
