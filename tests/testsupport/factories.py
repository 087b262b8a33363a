"""Builders named by ``model.factory`` / ``data.factory`` in tests ("testsupport.factories:NAME")."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


class PlainFCN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 6):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, num_classes, 1)
        )

    def forward(self, x):
        return self.body(x)


def fcn(in_channels, num_classes, width=6):
    """Takes only what it names: segtrack offers in_channels, num_classes, dims."""
    return PlainFCN(in_channels, num_classes, width)


def not_a_model():
    return "a string"


class Stripes(Dataset):
    def __init__(self, count: int, num_classes: int, channels: int, size: int = 16):
        self.items = []
        for i in range(count):
            mask = np.zeros((size, size), np.int64)
            for cls in range(1, num_classes):
                mask[:, (i + cls * 4) % size : (i + cls * 4) % size + 3] = cls
            image = np.repeat((mask / num_classes).astype(np.float32)[None], channels, axis=0)
            self.items.append((torch.from_numpy(image), torch.from_numpy(mask)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def stripes(num_classes, in_channels, count=12):
    return Stripes(count, num_classes, in_channels)


def stripes_pair(num_classes, in_channels):
    return Stripes(10, num_classes, in_channels), Stripes(4, num_classes, in_channels)
