"""What the adapters read off a framework: logged values as numbers, an epoch's mean loss, one input
image of a batch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def scalar(value: Any) -> float | None:
    """A float from a number, a numpy scalar or a one-element tensor; None for anything else."""
    if hasattr(value, "numel") and callable(value.numel):
        if value.numel() != 1:
            return None
        value = value.item()
    elif hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """Every entry of ``values`` that is one number (lists, images and per-class tensors are left out)."""
    out = {}
    for name, value in values.items():
        number = scalar(value)
        if number is not None:
            out[str(name)] = number
    return out


class RunningMean:
    """The mean of an epoch's training losses, summed where they are (a GPU tensor stays on the GPU:
    no synchronisation per batch) and read once."""

    def __init__(self) -> None:
        self.total: Any = 0.0
        self.count = 0

    def add(self, value: Any) -> None:
        if value is None:
            return
        if hasattr(value, "detach"):
            if value.numel() != 1:
                return
            value = value.detach().reshape(())
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return
        self.total, self.count = self.total + value, self.count + 1

    def mean(self) -> float | None:
        if not self.count:
            return None
        total = scalar(self.total)
        return None if total is None or math.isnan(total) else total / self.count

    def reset(self) -> None:
        self.total, self.count = 0.0, 0


def first_input(batch: Any) -> Any:
    """One input image of a batch, ``(1, C, *spatial)`` on the CPU, for the ONNX example: from
    ``(x, y)``, a dict with ``"image"``, or MONAI's list of per-item dicts; None for anything else."""
    import torch

    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Mapping):  # MONAI's decollated items
        item = batch[0].get("image", batch[0].get("img"))
        batch = item[None] if isinstance(item, torch.Tensor) else None
    elif isinstance(batch, Mapping):
        batch = batch.get("image", batch.get("img"))
    elif isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor) or batch.dim() not in (4, 5):
        return None
    first = batch[:1].detach().cpu()
    return first.as_tensor() if hasattr(first, "as_tensor") else first  # MONAI's MetaTensor as a plain tensor
