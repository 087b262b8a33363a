"""A small UNet for 2D images or 3D volumes: two 3x3(x3) convolutions per level, max-pool down,
transposed-conv up, skips."""

from __future__ import annotations

import torch
from torch import nn

from segtrack.config.secrets import mask_secrets, secret_keys

_LAYERS = {
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ConvTranspose2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.ConvTranspose3d),
}


def _block(cin: int, cout: int, dims: int) -> nn.Sequential:
    conv, norm, _, _ = _LAYERS[dims]
    return nn.Sequential(
        conv(cin, cout, 3, padding=1, bias=False),
        norm(cout),
        nn.ReLU(inplace=True),
        conv(cout, cout, 3, padding=1, bias=False),
        norm(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 8, depth: int = 2, dims: int = 2):
        super().__init__()
        conv, _, pool, up = _LAYERS[dims]
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_channels, widths[0], dims)])
        self.down.extend(_block(widths[i], widths[i + 1], dims) for i in range(depth))
        self.pool = pool(2)
        self.up = nn.ModuleList(up(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth)))
        self.merge = nn.ModuleList(_block(widths[i] * 2, widths[i], dims) for i in reversed(range(depth)))
        self.head = conv(widths[0], num_classes, 1)
        self.spatial_multiple = 2**depth  # input sides must be divisible by this

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def build_unet(in_channels: int, num_classes: int, dims: int = 2, width: int = 8, depth: int = 2) -> UNet:
    """The ``unet`` entry of the ``segtrack.models`` group."""
    return UNet(in_channels, num_classes, width, depth, dims)


def model_signature(model_cfg: dict, num_classes: int, dims: int = 2) -> dict:
    """What must match for a checkpoint's weights to fit the configured model."""
    if model_cfg.get("factory") or model_cfg["name"] != "unet" or model_cfg.get("kwargs"):
        return {
            "name": model_cfg.get("factory") or model_cfg["name"],
            "in_channels": model_cfg["in_channels"],
            "num_classes": num_classes,
            "dims": dims,
            # keys configs/.secrets.toml defines (a token the builder takes) are masked: never in a checkpoint
            "kwargs": mask_secrets({"model": {"kwargs": dict(model_cfg.get("kwargs") or {})}}, secret_keys())["model"][
                "kwargs"
            ],
        }
    return {  # the built-in UNet keeps the signature its earlier checkpoints carry
        "name": model_cfg["name"],
        "in_channels": model_cfg["in_channels"],
        "num_classes": num_classes,
        "width": model_cfg["width"],
        "depth": model_cfg["depth"],
        **({"dims": dims} if dims != 2 else {}),  # 2D checkpoints written before 3D existed stay valid
    }


def user_model_signature(model: nn.Module, num_classes: int) -> dict:
    """What must match for a checkpoint's weights to fit a model the user passed in."""
    kind = type(model)
    return {
        "name": f"{kind.__module__}.{kind.__qualname__}",
        "num_classes": num_classes,
        "parameters": sum(p.numel() for p in model.state_dict().values()),
    }
