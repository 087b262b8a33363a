"""Bring your own model and data (2D): a hand-written network returning a dict, a Dataset of
odd-sized 16-bit images whose masks mark unlabelled pixels with 255, and a plugin metric that
decides which checkpoint is best.

    python examples/own_model_2d.py [--set train.epochs=10 ...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from segtrack import SegmentationTrainer, hookimpl, load_settings


class TinySegNet(nn.Module):
    """Any nn.Module works: this one returns {"out": logits} like torchvision's models."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3, width: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return {"out": self.classifier(self.encoder(x))}


class Microscopy16Bit(Dataset):
    """Stand-in for a folder of 16-bit tiles: (image, mask) pairs, 90x130 pixels (no power of 2)."""

    def __init__(self, count: int = 40, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.samples = []
        for _ in range(count):
            mask = np.zeros((90, 130), dtype=np.int64)
            for cls in (1, 2):
                y, x = rng.integers(10, 70), rng.integers(10, 110)
                mask[y : y + 15, x : x + 18] = cls
            raw = (mask * 9000 + rng.normal(3000, 800, mask.shape)).clip(0, 65535).astype(np.uint16)
            mask[:, :4] = 255  # an unlabelled margin: left out of loss and metrics
            image = torch.from_numpy(raw.astype(np.float32) / 65535.0)[None]  # (1, H, W)
            self.samples.append((image, torch.from_numpy(mask)))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


class ForegroundF1:
    """A metric of our own, accumulated over validation batches: F1 of foreground (any class) against
    background. A sound monitor: predicting no foreground scores 0, predicting all of it scores low."""

    name = "fg_f1"

    def __init__(self):
        self.true_positive = self.false_positive = self.false_negative = 0

    @hookimpl
    def validation_batch_end(self, batch):
        valid = batch.masks >= 0
        predicted, truth = (batch.predictions > 0) & valid, (batch.masks > 0) & valid
        self.true_positive += int((predicted & truth).sum())
        self.false_positive += int((predicted & ~truth).sum())
        self.false_negative += int((~predicted & truth).sum())

    @hookimpl
    def validation_metrics(self):
        counted = 2 * self.true_positive + self.false_positive + self.false_negative
        value = 2 * self.true_positive / counted if counted else 0.0
        self.true_positive = self.false_positive = self.false_negative = 0
        return {"val_fg_f1": value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    settings = load_settings(
        overrides=[
            "run.name=own-model-2d",
            "data.num_classes=3",
            "data.ignore_index=255",
            "data.class_names=['background','nucleus','membrane']",
            "checkpoint.monitor=val_fg_f1",
            "train.epochs=6",
            "train.lr=0.01",
            *args.overrides,
        ]
    )
    trainer = SegmentationTrainer(settings, model=TinySegNet(), train_data=Microscopy16Bit(), plugins=[ForegroundF1()])
    result = trainer.fit()
    print(
        f"{result.status}: best val_fg_f1 {result.best_value:.3f} at epoch {result.best_epoch + 1}, "
        f"val_dice_nucleus {result.best_metrics['val_dice_nucleus']:.3f}; ONNX: {result.export and result.export.path}"
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
