"""Per-step MLflow logging against a local `mlflow server` (SQLite backend, 1 worker).

A step is sized to ~10-20 ms (what an accelerator gives). Variants, interleaved per round:
  off        : the mlflow plugin disabled
  on         : the plugin with its defaults (train_loss_step every 50 steps, flush every 2 s)
  on/step    : the plugin logging train_loss_step at every step
  on+sys     : the defaults with system metrics on (mlflow.system_metrics, sampled every second here)
  down       : the plugin while the server is dead (spooling, mlflow.offline = auto)
  naive      : plugin off, and a callback calling mlflow.log_metrics synchronously each step
The ratio is of the training-loop time (fit_start to the last epoch_end), median of rounds. After
each tracked fit the bench waits (untimed) until the shipper process has sent the run, so its
sending does not slow the next variant; the server's CPU seconds include that wait.
Also: time from trainer construction to the first point in a fresh sqlite:/// store.
``python bench/bench_mlflow.py [ROUNDS]`` (default 5).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import report  # first: it makes testsupport importable

import segtrack_mlflow
from segtrack import hookimpl
from segtrack.config.settings import load_settings
from segtrack.loop.trainer import SegmentationTrainer
from segtrack.plugins.manager import get_plugin_manager, installed_entry_points
from testsupport.mlflow_server import MlflowServer
from testsupport.ports import free_port

OTHERS = [n for n in ("analytics",) if n in installed_entry_points()]  # not measured here
EPOCHS = 10  # a fit of ~6 s: the one-off cost of creating the run is part of it, not all of it
SHAPE = [
    f"train.epochs={EPOCHS}",
    "train.batch_size=4",
    "data.num_samples=320",
    "data.image_size=32",
    "model.width=10",
    "model.depth=2",
    "export.enabled=false",
    "mlflow.sample_overlays=0",
    "mlflow.shipper_linger=10",
    "mlflow.checkpoint_policy='none'",
    "mlflow.drain_timeout=0",
]


class LoopClock:
    name = "loop_clock"

    def __init__(self):
        self.started = self.ended = 0.0

    @hookimpl
    def fit_start(self):
        self.started = time.perf_counter()

    @hookimpl
    def epoch_end(self):
        self.ended = time.perf_counter()


class NaiveLogger:
    """What common trainers do: a synchronous MLflow call on the training thread each step."""

    name = "naive"

    def __init__(self, uri: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(uri)  # not mlflow.set_tracking_uri: that sets MLFLOW_TRACKING_URI
        self.experiment_id = self.client.create_experiment("naive")
        self.run_id = None

    @hookimpl
    def fit_start(self):
        self.run_id = self.client.create_run(self.experiment_id).info.run_id

    @hookimpl
    def train_batch_end(self, step):
        self.client.log_metric(self.run_id, "train_loss", step.loss, step=step.global_step)

    @hookimpl
    def fit_end(self):
        self.client.set_terminated(self.run_id)


def fit(uri: str, workdir: Path, plugin_on: bool, extra=(), settings_extra=(), settle=True) -> tuple[float, float]:
    clock = LoopClock()
    settings = load_settings(
        overrides=[
            *SHAPE,
            *settings_extra,
            f"mlflow.tracking_uri='{uri}'",
            f"checkpoint.dir='{workdir}/ck'",
            f"mlflow.spool_dir='{workdir}/{'spool' if settle else 'spool-unsent'}'",  # waited for: only the sent
        ]
    )
    disabled = ["progress", *OTHERS] + ([] if plugin_on else ["mlflow"])
    manager = get_plugin_manager(settings, [clock, *extra], disabled=disabled)
    started = time.perf_counter()
    SegmentationTrainer(settings, plugin_manager=manager).fit()
    took = time.perf_counter() - started
    if plugin_on and settle:
        assert segtrack_mlflow.wait_sent(workdir / "spool", 120), "the shipper did not send the run in 120 s"
    return clock.ended - clock.started, took


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) used so far by every process of one process group (the server)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: process group
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def first_point_seconds(workdir: Path) -> float:
    """Fresh store: from trainer construction until the first metric row is in the database."""
    db = workdir / "fresh.db"
    found = threading.Event()
    seen_at = []

    def poll():
        while not found.is_set():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                    if con.execute("SELECT count(*) FROM metrics").fetchone()[0]:
                        seen_at.append(time.perf_counter())
                        found.set()
                        return
            except sqlite3.Error:
                pass
            time.sleep(0.01)

    watcher = threading.Thread(target=poll, daemon=True)
    started = time.perf_counter()
    watcher.start()
    settings = load_settings(
        overrides=[
            *SHAPE,
            "train.epochs=1",
            f"mlflow.tracking_uri='sqlite:///{db}'",
            "mlflow.drain_timeout=60",
            f"mlflow.spool_dir='{workdir}/spool1'",
            f"checkpoint.dir='{workdir}/ck1'",
        ]
    )
    manager = get_plugin_manager(settings, disabled=["progress", *OTHERS])
    SegmentationTrainer(settings, plugin_manager=manager).fit()
    found.wait(60)
    return seen_at[0] - started


def main(rounds: int = 5) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="segtrack-bench-"))
    os.chdir(workdir)
    shutil.copy(_template(workdir), workdir / "server.db")
    server = MlflowServer(f"sqlite:///{workdir / 'server.db'}", workdir).start()
    dead = f"http://127.0.0.1:{free_port()}"
    naive = NaiveLogger(server.uri)
    variants = {
        "off": lambda: fit(server.uri, workdir, False),
        "on": lambda: fit(server.uri, workdir, True),
        "on/step": lambda: fit(server.uri, workdir, True, settings_extra=["mlflow.log_every_n_steps=1"]),
        "on+sys": lambda: fit(
            server.uri, workdir, True, settings_extra=["mlflow.system_metrics=true", "mlflow.system_metrics_interval=1"]
        ),
        "down": lambda: fit(dead, workdir, True, settle=False),
        "naive": lambda: fit(server.uri, workdir, False, [naive]),
    }
    loop = {name: [] for name in variants}
    server_cpu = {name: [] for name in variants}
    try:
        for run in variants.values():
            run()  # warm-up
        for round_index in range(rounds):
            order = list(variants.items())[:: -1 if round_index % 2 else 1]
            for name, run in order:
                cpu_before = group_cpu_seconds(server.process.pid)
                loop[name].append(run()[0])
                server_cpu[name].append(group_cpu_seconds(server.process.pid) - cpu_before)
                print(f"round {round_index}: {name} {loop[name][-1]:.3f} s", flush=True)
    finally:
        server.stop()
    steps = EPOCHS * 60
    off = statistics.median(loop["off"])
    rows = [
        (
            f"{name}: loop time",
            f"{statistics.median(v):.3f} s",
            f"{statistics.median(v) / off:.3f}x off; {statistics.median(v) / steps * 1e3:.1f} ms/step; "
            f"server CPU {statistics.median(server_cpu[name]):.2f} s",
        )
        for name, v in loop.items()
    ]
    rows.append(("target", "", "on <= 1.03x, on+sys <= 1.05x, down <= 1.03x; on/step and naive reported"))
    rows.append(
        (
            "fresh sqlite store: first point",
            f"{first_point_seconds(workdir):.2f} s",
            "trainer construction -> first metric row (includes mlflow import and migrations)",
        )
    )
    report(
        f"per-step MLflow logging, {steps} steps, median of {rounds} interleaved rounds (python bench/bench_mlflow.py)",
        rows,
    )
    shutil.rmtree(workdir, ignore_errors=True)


def _template(workdir: Path) -> Path:
    from mlflow import MlflowClient

    path = workdir / "template.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
