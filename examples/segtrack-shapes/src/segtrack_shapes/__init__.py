"""A dataset and a model that segtrack finds by name through entry points.

``ellipses(num_classes, in_channels, dims, seed, count=48, size=48)`` returns a map-style Dataset of
noisy ellipses (ellipsoids for ``dims = 3``); ``DilatedFCN`` is a small fully convolutional net
that takes any input size. segtrack passes each builder the arguments its signature names, plus
``data.kwargs`` / ``model.kwargs``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


class Ellipses(Dataset):
    def __init__(self, num_classes: int, in_channels: int, dims: int, seed: int, count: int, size: int):
        rng = np.random.default_rng(seed)
        grid = np.mgrid[(slice(0, size),) * dims].astype(np.float32) / size
        self.samples = []
        for _ in range(count):
            mask = np.zeros((size,) * dims, dtype=np.int64)
            for cls in range(1, num_classes):
                centre = rng.uniform(0.25, 0.75, dims)
                radii = rng.uniform(0.08, 0.2, dims)
                inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
                mask[inside] = cls
            image = rng.normal(0.2, 0.1, (in_channels, *mask.shape)).astype(np.float32) + 0.25 * mask
            self.samples.append((torch.from_numpy(image), torch.from_numpy(mask)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image, mask = self.samples[index]
        return {"image": image, "label": mask[None]}  # MONAI's convention: segtrack reads it too


def ellipses(num_classes: int, in_channels: int, dims: int, seed: int, count: int = 48, size: int = 48) -> Dataset:
    return Ellipses(num_classes, in_channels, dims, seed, count, size)


class DilatedFCN(nn.Module):
    """No down-sampling, growing dilation: any input size, full-resolution logits."""

    def __init__(self, in_channels: int, num_classes: int, dims: int = 2, width: int = 16):
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
        layers, channels = [], in_channels
        for dilation in (1, 2, 4):
            layers += [conv(channels, width, 3, padding=dilation, dilation=dilation), norm(width), nn.ReLU()]
            channels = width
        self.body = nn.Sequential(*layers)
        self.head = conv(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
