"""What MLflow tracking costs one fit of a user's small model through the Python API: tracking on
(the mlflow plugin with its default settings, a live `mlflow server` on 127.0.0.1) against tracking
off, at 1,000 steps (20 epochs of 50 steps of a few ms) and at 100 steps (2 epochs).

Whole fits are timed (constructor to ``fit()`` returning), interleaved, medians. After each tracked
fit the bench waits, untimed, until the shipper process has sent the run (so its sending does not
slow the next variant); that wait is reported too. The fixed cost tracking adds to one fit is the
intercept of the overhead measured at the two lengths:
    fixed = (o100 * 1000 - o1000 * 100) / 900,   per step = (o1000 - o100) / 900.
``python bench/bench_tracking_fit.py [ROUNDS]`` (default 5).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchlib import interleaved, median, report  # first: it makes testsupport importable
from torch import nn
from torch.utils.data import DataLoader, Dataset

import segtrack_mlflow
from segtrack.config.settings import load_settings
from segtrack.loop.trainer import SegmentationTrainer
from segtrack.plugins.manager import get_plugin_manager
from testsupport.mlflow_server import MlflowServer

STEPS_PER_EPOCH, BATCH, SIZE = 50, 4, 32


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))

    def forward(self, x):
        return self.body(x)


class Squares(Dataset):
    def __init__(self, count: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.labels = (torch.rand(count, 1, SIZE, SIZE, generator=generator) > 0.5).long()
        self.images = self.labels.float() + 0.3 * torch.randn(count, 1, SIZE, SIZE, generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"image": self.images[index], "label": self.labels[index]}


def fit(workdir: Path, uri: str, epochs: int, tracked: bool) -> None:
    torch.manual_seed(0)
    train = DataLoader(Squares(STEPS_PER_EPOCH * BATCH, 1), batch_size=BATCH, shuffle=True)
    val = DataLoader(Squares(8, 2), batch_size=BATCH)
    settings = load_settings(
        overrides=[
            f"train.epochs={epochs}",
            "data.num_classes=2",
            "export.enabled=false",
            f"checkpoint.dir='{workdir}/ck'",
            f"mlflow.tracking_uri='{uri}'",
            f"mlflow.spool_dir='{workdir}/spool'",
        ]
    )
    disabled = ["progress", "analytics", "sweep"] + ([] if tracked else ["mlflow"])
    manager = get_plugin_manager(settings, disabled=disabled)
    SegmentationTrainer(settings, model=SmallNet(), train_data=train, val_data=val, plugin_manager=manager).fit()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="segtrack-bench-tracking-"))
    os.chdir(workdir)
    server = MlflowServer(f"sqlite:///{workdir / 'server.db'}", workdir).start()
    settled: list[float] = []

    def settle() -> None:
        started = time.perf_counter()
        assert segtrack_mlflow.wait_sent(workdir / "spool", 120), "the shipper did not send the run in 120 s"
        settled.append(time.perf_counter() - started)

    try:
        fit(workdir, server.uri, 1, True), settle(), fit(workdir, server.uri, 1, False)  # warm-up
        settled.clear()
        times = interleaved(
            {
                "off-1000": lambda: fit(workdir, server.uri, 20, False),
                "on-1000": lambda: fit(workdir, server.uri, 20, True),
                "off-100": lambda: fit(workdir, server.uri, 2, False),
                "on-100": lambda: fit(workdir, server.uri, 2, True),
            },
            rounds,
            settle={"on-1000": settle, "on-100": settle},
        )
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    m = {name: median(values) for name, values in times.items()}
    o1000, o100 = m["on-1000"] - m["off-1000"], m["on-100"] - m["off-100"]
    fixed, per_step = (o100 * 1000 - o1000 * 100) / 900, (o1000 - o100) / 900
    report(
        f"tracking on vs off, one fit of a small user model through the Python API, median of {rounds} "
        "interleaved rounds (python bench/bench_tracking_fit.py)",
        [
            ("1000 steps: off", f"{m['off-1000']:.3f} s", f"{m['off-1000'] / 1000 * 1e3:.1f} ms/step"),
            ("1000 steps: on", f"{m['on-1000']:.3f} s", ""),
            ("1000 steps: on / off", f"{m['on-1000'] / m['off-1000']:.3f}x", "target <= 1.05x"),
            ("100 steps: off", f"{m['off-100']:.3f} s", ""),
            ("100 steps: on", f"{m['on-100']:.3f} s", f"{m['on-100'] / m['off-100']:.3f}x"),
            ("fixed cost per fit", f"{fixed * 1e3:.0f} ms", "target <= 200 ms"),
            ("cost per step", f"{per_step * 1e6:.0f} us", ""),
            ("after fit(): until sent", f"{median(settled):.2f} s", "the shipper process, in the background"),
        ],
    )


if __name__ == "__main__":
    main()
