"""``validation_batch_end`` for every validation batch of every rank, fired on rank 0.

In one process each batch is handed on as it is computed. Under torchrun the other ranks keep their
batches (on the CPU) and send them to rank 0 after the pass, so a plugin's metric counts the whole
validation set, as it would in one process."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from segtrack.plugins.records import RunInfo, ValidationBatch
from segtrack.runtime.distributed import DistContext


class ValidationBatches:
    def __init__(self, hooks: Any, dist: DistContext, trainer: Any, run: RunInfo, wanted: bool):
        """``wanted``: whether any plugin implements ``validation_batch_end`` on rank 0 (the same
        answer on every rank, so no rank gathers alone)."""
        self.hooks, self.dist, self.trainer, self.run, self.wanted = hooks, dist, trainer, run, wanted
        self.kept: list[ValidationBatch] = []
        self.count = 0

    def add(self, batch: ValidationBatch) -> None:
        if not self.wanted:
            return
        if self.dist.is_main:
            self._fire(batch)
        else:
            self.kept.append(_on_cpu(batch))

    def finish(self) -> None:
        """Rank 0 receives and hands on the other ranks' batches (numbered after its own)."""
        if not (self.wanted and self.dist.enabled):
            return
        for rank_batches in self.dist.gather_to_main(self.kept)[1:]:
            for batch in rank_batches:
                self._fire(replace(batch, batch_index=self.count))
        self.kept = []

    def _fire(self, batch: ValidationBatch) -> None:
        self.count += 1
        self.hooks.call("validation_batch_end", trainer=self.trainer, run=self.run, batch=batch)


def _on_cpu(batch: ValidationBatch) -> ValidationBatch:
    def cpu(value: Any) -> Any:
        return value.detach().cpu() if isinstance(value, torch.Tensor) else value

    return replace(
        batch,
        images=cpu(batch.images),
        masks=cpu(batch.masks),
        logits=cpu(batch.logits),
        predictions=cpu(batch.predictions),
    )
