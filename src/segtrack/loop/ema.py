"""An exponential moving average of a model's weights (``train.ema``), the weights a fit validates
and exports when it is on: ``avg = d * avg + (1 - d) * weights`` after every optimizer step, with
``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short fit is not dominated by its
random initial weights; buffers (BatchNorm statistics) are copied as they are."""

from __future__ import annotations

import copy
from typing import Any

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self._pairs = list(zip(self.model.parameters(), model.parameters()))
        self._buffers = list(zip(self.model.buffers(), model.buffers()))

    @torch.no_grad()
    def update(self) -> None:
        averaged: list[torch.Tensor] = [a for a, _ in self._pairs if a.is_floating_point()]
        current: list[torch.Tensor] = [w.detach() for a, w in self._pairs if a.is_floating_point()]
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for mine, theirs in self._buffers:
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
