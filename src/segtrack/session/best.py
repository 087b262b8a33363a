"""The best epoch by ``checkpoint.monitor`` and ``checkpoint.mode``, and the last epoch's metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BestEpoch:
    monitor: str
    mode: str  # "max" | "min"
    value: float = math.nan
    epoch: int = -1  # the best epoch, -1 before one is found
    metrics: dict[str, float] = field(default_factory=dict)  # the best epoch's metrics
    last_epoch: int = -1  # the last epoch recorded
    last_metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if math.isnan(self.value):
            self.value = -math.inf if self.mode == "max" else math.inf

    def record(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Take one epoch's metrics; True when the monitored one improved (a missing or NaN
        monitor, e.g. its plugin failed, never makes a best epoch)."""
        self.last_epoch, self.last_metrics = epoch, dict(metrics)
        value = metrics.get(self.monitor, math.nan)
        improved = not math.isnan(value) and (value > self.value if self.mode == "max" else value < self.value)
        if improved:
            self.value, self.epoch, self.metrics = value, epoch, dict(metrics)
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "value": self.value,
            "epoch": self.epoch,
            "metrics": dict(self.metrics),
            "last_epoch": self.last_epoch,
            "last_metrics": dict(self.last_metrics),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A saved best; one saved for another monitor is not comparable and is dropped."""
        self.last_epoch = int(state.get("last_epoch", -1))
        self.last_metrics = dict(state.get("last_metrics", {}))
        if state.get("monitor", self.monitor) != self.monitor:
            return
        self.value, self.epoch = float(state["value"]), int(state["epoch"])
        self.metrics = dict(state.get("metrics", {}))
