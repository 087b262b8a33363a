"""A framework's logged values as epoch metrics: numbers only, one value per name."""

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
    """The mean of an epoch's training losses."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, value: float | None) -> None:
        if value is not None and not math.isnan(value):
            self.total, self.count = self.total + value, self.count + 1

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def reset(self) -> None:
        self.total, self.count = 0.0, 0
