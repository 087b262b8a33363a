"""The folder dataset's memory and speed: one epoch of `segtrack train` over 150 and over 1,500
RGB 256x256 PNG pairs with data.crop=128 and 2 DataLoader workers.

Memory target: the peak RSS of any process (trainer or worker) grows by <= 250 MB from 150 to
1,500 pairs (the eager reader grew by 3.7 GB). Speed: images/s of the loader alone beside the
images/s of the training step alone and of the whole fit, so a user sees whether data or compute
bounds the fit. Runs alternate 150/1,500 per round; medians are reported.
``python bench/bench_folder.py [rounds]``
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from benchlib import median, report

SIZES = (150, 1500)
SIDE, CROP, WORKERS, BATCH = 256, 128, 2, 8
TARGET_GROWTH_MB = 250


def write_pairs(root: Path, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(count)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:SIDE, :SIDE]
    for i in range(count):
        mask = np.zeros((SIDE, SIDE), np.uint8)
        for cls in (1, 2):
            cy, cx, r = [*rng.integers(40, SIDE - 40, 2).tolist(), int(rng.integers(12, 40))]
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = cls
        rgb = (np.stack([mask == 1, mask == 2, mask == 0], -1) * 150 + rng.integers(0, 100, (SIDE, SIDE, 3))).astype(
            np.uint8
        )
        Image.fromarray(rgb).save(root / "images" / f"p{i:05d}.png", compress_level=1)
        Image.fromarray(mask).save(root / "masks" / f"p{i:05d}.png")


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return pids


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def one_epoch(data: Path, workdir: Path) -> tuple[float, float]:
    """(peak RSS of any process in MB, fit images/s) of one `segtrack train` epoch."""
    sets = [
        "data.source='folder'",
        f"data.path='{data}'",
        f"data.crop={CROP}",
        f"train.num_workers={WORKERS}",
        "train.epochs=1",
        f"train.batch_size={BATCH}",
        "export.enabled=false",
        "plugins.autoload=false",
        "model.width=8",
        "model.depth=2",
    ]
    cmd = [sys.executable, "-m", "segtrack", "train", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "CI": "1"}
    process = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample():
        while process.poll() is None:
            peak[0] = max([peak[0], *(_rss_mb(p) for p in _tree(process.pid))])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate(timeout=1800)
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"segtrack train failed:\n{err}")
    seconds = float(re.search(r"epoch 1/1 .* ([0-9.]+)s", err).group(1))
    trained = int(re.search(r"(\d+) train / \d+ val samples", err).group(1))
    return peak[0], trained / seconds


def loader_rate(data: Path) -> float:
    """images/s of the training DataLoader alone (read, decode, normalise, crop, flip; 2 workers)."""
    from torch.utils.data import DataLoader

    from segtrack.data.folder import FolderDataset
    from segtrack.data.plan import _TrainingView

    dataset = FolderDataset(data, dims=2, channels=3, crop=[CROP, CROP])
    loader = DataLoader(_TrainingView(dataset, 0), batch_size=BATCH, num_workers=WORKERS, shuffle=True)
    started = time.perf_counter()
    count = sum(len(images) for images, _ in loader)
    return count / (time.perf_counter() - started)


def compute_rate(steps: int = 30) -> float:
    """images/s of forward + backward + AdamW step alone on ready batches of crops."""
    import torch

    from segtrack.loop.losses import ce_dice
    from segtrack.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(3, 3, 8, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, masks = torch.rand(BATCH, 3, CROP, CROP), torch.randint(0, 3, (BATCH, CROP, CROP))
    for step in range(steps + 3):
        if step == 3:
            started = time.perf_counter()
        optimizer.zero_grad()
        ce_dice(model(images), masks, 1.0).backward()
        optimizer.step()
    return steps * BATCH / (time.perf_counter() - started)


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="segtrack-bench-folder-") as tmp:
        root = Path(tmp)
        for count in SIZES:
            write_pairs(root / f"pairs{count}", count)
        peaks: dict[int, list[float]] = {c: [] for c in SIZES}
        fit_rates: dict[int, list[float]] = {c: [] for c in SIZES}
        for round_index in range(rounds):
            for count in SIZES if round_index % 2 == 0 else SIZES[::-1]:
                workdir = root / f"run{count}-{round_index}"
                workdir.mkdir()
                peak, rate = one_epoch(root / f"pairs{count}", workdir)
                peaks[count].append(peak)
                fit_rates[count].append(rate)
        loader = median([loader_rate(root / "pairs1500") for _ in range(rounds)])
        compute = median([compute_rate() for _ in range(rounds)])
    growth = median(peaks[1500]) - median(peaks[150])
    bound = "data" if loader < compute else "compute"
    report(
        f"folder dataset, one epoch, crop {CROP}, {WORKERS} workers, {rounds} interleaved rounds (medians)",
        [
            ("peak RSS, 150 pairs", f"{median(peaks[150]):.0f} MB", ""),
            ("peak RSS, 1,500 pairs", f"{median(peaks[1500]):.0f} MB", ""),
            (
                "growth 150 -> 1,500",
                f"{growth:+.0f} MB",
                f"target <= {TARGET_GROWTH_MB} MB: {'ok' if growth <= TARGET_GROWTH_MB else 'MISSED'}",
            ),
            ("loader alone", f"{loader:.0f} img/s", "read+decode+normalise+crop+flip"),
            ("training step alone", f"{compute:.0f} img/s", "forward+backward+AdamW on ready crops"),
            (
                "whole fit (1,500)",
                f"{median(fit_rates[1500]):.0f} img/s",
                f"train images / epoch seconds: {bound}-bound",
            ),
        ],
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
