"""A small UNet: two 3x3 convolutions per level, max-pool down, transposed-conv up, skips."""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 8, depth: int = 2):
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_channels, widths[0])])
        self.down.extend(_block(widths[i], widths[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth)))
        self.merge = nn.ModuleList(_block(widths[i] * 2, widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def model_signature(model_cfg: dict, num_classes: int) -> dict:
    """What must match for a checkpoint's weights to fit this model."""
    return {
        "name": model_cfg["name"],
        "in_channels": model_cfg["in_channels"],
        "num_classes": num_classes,
        "width": model_cfg["width"],
        "depth": model_cfg["depth"],
    }


def build_model(model_cfg: dict, num_classes: int) -> UNet:
    return UNet(model_cfg["in_channels"], num_classes, model_cfg["width"], model_cfg["depth"])
