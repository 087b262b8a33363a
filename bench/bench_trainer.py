"""SegmentationTrainer vs a hand-written torch loop doing the same work (target <= 1.02x).

Both train the same UNet on the same in-memory data with AdamW, validate with Dice each epoch
and save a checkpoint each epoch. Rounds interleave the two; the ratio is of medians.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from benchlib import interleaved, median, report

from segtrack.config.settings import load_settings
from segtrack.data.synthetic import synthetic_arrays
from segtrack.loop.losses import ce_dice
from segtrack.loop.metrics import ConfusionCounts
from segtrack.loop.trainer import SegmentationTrainer
from segtrack.models.registry import build_model
from segtrack.plugins.manager import get_plugin_manager

EPOCHS, SAMPLES = 5, 288
OVERRIDES = [
    f"train.epochs={EPOCHS}",
    "train.batch_size=8",
    f"data.num_samples={SAMPLES}",
    "data.image_size=64",
    "model.width=8",
    "model.depth=2",
    "export.enabled=false",
    "train.augment=false",
    "train.scheduler='constant'",
]


def trainer_fit(workdir: str) -> None:
    settings = load_settings(overrides=[*OVERRIDES, f"checkpoint.dir='{workdir}/trainer'"])
    manager = get_plugin_manager(settings, autoload=False, disabled=["progress"])
    SegmentationTrainer(settings, plugin_manager=manager).fit()


def hand_loop(workdir: str) -> None:
    torch.manual_seed(0)
    images, masks = synthetic_arrays(SAMPLES, 64, 3, 3, seed=0)
    order = np.random.default_rng(0).permutation(SAMPLES)
    val, train = np.sort(order[: SAMPLES // 4]), np.sort(order[SAMPLES // 4 :])
    x, y = torch.from_numpy(images), torch.from_numpy(masks)
    model = build_model({"name": "unet", "in_channels": 3, "width": 8, "depth": 2}, 3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=1e-4)
    os.makedirs(f"{workdir}/hand", exist_ok=True)
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.from_numpy(train)[torch.randperm(len(train))]
        for start in range(0, len(perm), 8):
            batch = perm[start : start + 8]
            loss = ce_dice(model(x[batch]), y[batch], 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        counts = ConfusionCounts(3, torch.device("cpu"))
        with torch.no_grad():
            for start in range(0, len(val), 8):
                batch = torch.from_numpy(val[start : start + 8])
                logits = model(x[batch])
                ce_dice(logits, y[batch], 1.0)
                counts.update(logits.argmax(1), y[batch])
        counts.mean_foreground()
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
            f"{workdir}/hand/last.pt",
        )


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        trainer_fit(workdir), hand_loop(workdir)  # warm-up
        times = interleaved({"trainer": lambda: trainer_fit(workdir), "hand": lambda: hand_loop(workdir)}, rounds=5)
    t, h = median(times["trainer"]), median(times["hand"])
    report(
        f"trainer vs hand-written loop, {EPOCHS} epochs, {SAMPLES * 3 // 4} train / {SAMPLES // 4} val 64x64, "
        "whole fit incl. settings, plugin manager, checkpoints (python bench/bench_trainer.py)",
        [
            ("SegmentationTrainer.fit", f"{t:.3f} s", ""),
            ("hand-written loop", f"{h:.3f} s", ""),
            ("ratio trainer/hand", f"{t / h:.3f}x", "target <= 1.02x (median of 5 interleaved rounds)"),
        ],
    )


if __name__ == "__main__":
    main()
