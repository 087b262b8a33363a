"""Bring your own model and data (3D): a MONAI-style dataset of {"image", "label"} volumes, a
hand-written 3D network, and 3-fold cross-validation over the one dataset.

    python examples/own_model_3d.py [--folds 3] [--set train.epochs=10 ...]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import Dataset

from segtrack import SegmentationTrainer, load_settings


class VolumeNet(nn.Module):
    """A small 3D encoder-decoder; returns a tuple (logits, features), the first item is used."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 8):
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv3d(in_channels, width, 3, padding=1),
            nn.InstanceNorm3d(width),
            nn.ReLU(),
            nn.Conv3d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.head = nn.Conv3d(width, num_classes, 1)

    def forward(self, x):
        features = self.up(self.down(x))
        return self.head(features), features


class OrganVolumes(Dataset):
    """Stand-in for CT crops: ellipsoid organs in noise, labels with a channel axis as MONAI gives."""

    def __init__(self, count: int = 24, shape=(24, 40, 40), seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        grid = torch.stack(torch.meshgrid(*(torch.linspace(-1, 1, s) for s in shape), indexing="ij"))
        self.items = []
        for _ in range(count):
            centre = (torch.rand(3, generator=generator) - 0.5) * 0.6
            radii = 0.25 + 0.2 * torch.rand(3, generator=generator)
            inside = (((grid - centre.view(3, 1, 1, 1)) / radii.view(3, 1, 1, 1)) ** 2).sum(0) <= 1
            label = inside.float()[None]  # (1, D, H, W), float like MONAI's LoadImaged
            image = label * 0.6 + 0.25 * torch.randn(label.shape, generator=generator)
            self.items.append({"image": image, "label": label})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    settings = load_settings(
        overrides=[
            "run.name=own-model-3d",
            "data.dims=3",
            "data.num_classes=2",
            "data.class_names=['background','organ']",
            "train.epochs=6",
            "train.lr=0.02",
            "train.batch_size=4",
            *args.overrides,
        ]
    )
    torch.manual_seed(0)  # a network passed in code keeps its own initial weights: seed before building it
    outcome = SegmentationTrainer(settings, model=VolumeNet(), train_data=OrganVolumes()).cv(folds=args.folds)
    for fold in outcome.folds:
        print(f"fold {fold.fold + 1}: {fold.status}, best val_dice_organ {fold.best_metrics['val_dice_organ']:.3f}")
    dice = outcome.summary["val_dice"]
    print(f"val_dice over {outcome.num_folds} folds: {dice['mean']:.3f} ± {dice['std']:.3f}")


if __name__ == "__main__":
    main()
