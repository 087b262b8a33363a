"""One training batch: forward, loss, backward and, every ``train.accumulate`` batches, the
optimizer step with gradient clipping, AMP's scaler, the weight average and a per-step schedule.
Guards the fit against batches with nothing to learn and against a diverging loss."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch

from segtrack.data.batches import check_logits, logits_of
from segtrack.errors import ModelError, TrainingDiverged
from segtrack.loop.losses import Loss, deep_supervision_loss, supervised_outputs
from segtrack.loop.state import FitState
from segtrack.runtime.distributed import DistContext

log = logging.getLogger("segtrack.trainer")


class TrainStep:
    def __init__(
        self,
        model: torch.nn.Module,
        state: FitState,
        loss: Loss,
        train: Mapping[str, Any],
        num_classes: int,
        device: torch.device,
        amp: bool,
        dist: DistContext,
    ):
        self.model, self.state, self.loss, self.num_classes = model, state, loss, num_classes
        self.device, self.amp, self.dist = device, amp, dist
        self.accumulate, self.clip = train["accumulate"], train["clip_grad_norm"]
        self.deep_supervision, self.drop_lowest = train["deep_supervision"], train["deep_supervision_drop_lowest"]
        self.max_nonfinite, self.per_step_schedule = train["max_nonfinite"], train["scheduler_interval"] == "step"
        self.bad_in_a_row, self.checked = 0, False

    def start_epoch(self, batches_per_epoch: int) -> None:
        self.batches_per_epoch, self.group_start, self.pending = batches_per_epoch, 0, 0
        self.loss_sum, self.samples = 0.0, 0

    def batch(self, images: torch.Tensor, masks: torch.Tensor, labelled: bool, epoch: int, index: int) -> float | None:
        """Train on one batch; returns its loss, or None when it taught nothing (no labelled pixel,
        or a non-finite loss skipped)."""
        if not labelled and not self.dist.enabled:
            return None  # no forward pass: nothing to learn (under DDP every rank must join the backward)
        if self.pending == 0:
            self.group_start = index
        stepping = self._last_of_group(index)
        with self._gradient_sync(stepping):
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                output = self.model(images)
                loss = self._loss(output, masks) if labelled else _touch_all(output)
            value = float(loss.detach())  # the one host sync of a step
            if not self._finite(value, epoch, index):
                return None
            self.state.scaler.scale(loss / self._group_size()).backward()
        self.pending += 1
        if stepping:
            self._optimizer_step()
        if not labelled:
            return None
        self.loss_sum += value * len(images)
        self.samples += len(images)
        return value

    def finish_epoch(self) -> float:
        """Step on gradients a short last group left pending; the epoch's mean loss over every rank."""
        if self.pending:
            if self.batches_per_epoch <= 0 and self.pending < self.accumulate:
                # a loader without a length: its last group's batches were divided by `accumulate`
                for param in self.model.parameters():
                    if param.grad is not None:
                        param.grad.mul_(self.accumulate / self.pending)
            self._optimizer_step()
        sums = self.dist.all_reduce_sum(
            torch.tensor([self.loss_sum, float(self.samples)], dtype=torch.float64, device=self.device)
        )
        return float(sums[0] / sums[1]) if float(sums[1]) else math.nan

    # -- parts -----------------------------------------------------------------------------------

    def _loss(self, output: Any, masks: torch.Tensor) -> torch.Tensor:
        if self.deep_supervision:
            outputs = supervised_outputs(output, masks.ndim)
            if not self.checked:
                check_logits(outputs[0], masks, self.num_classes)
                self.checked = True
                if len(outputs) == 1:
                    log.warning(
                        "train.deep_supervision = true, but the model returns one output in training mode: it "
                        "trains on that output alone (give the model deep-supervision heads, or set it false)"
                    )
            return deep_supervision_loss(self.loss, outputs, masks, self.drop_lowest)
        logits = logits_of(output)
        if not self.checked:
            if logits.ndim == masks.ndim + 2:
                raise ModelError(
                    f"the model returned {tuple(logits.shape)} logits in training mode, several outputs stacked "
                    f"(MONAI's deep supervision form): set train.deep_supervision = true"
                )
            check_logits(logits, masks, self.num_classes)  # before the first optimizer step
            self.checked = True
        return self.loss(logits, masks)

    def _finite(self, value: float, epoch: int, index: int) -> bool:
        """A non-finite loss drops its group's gradients; too many in a row end the fit. Under DDP
        every rank takes the same decision (one flag summed over ranks)."""
        bad = not math.isfinite(value)
        if self.dist.enabled:
            bad = bool(self.dist.all_reduce_sum(torch.tensor([float(bad)], device=self.device)).item())
        if not bad:
            self.bad_in_a_row = 0
            return True
        self.bad_in_a_row += 1
        self.state.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
        if self.bad_in_a_row >= self.max_nonfinite:
            lr = self.state.optimizer.param_groups[0]["lr"]
            where = "on this rank or another" if self.dist.enabled else ""
            raise TrainingDiverged(
                f"the training loss is {value if math.isfinite(value) else 'not finite'}{where and ' ' + where} "
                f"at epoch {epoch + 1}, batch {index + 1} "
                f"({self.bad_in_a_row} non-finite step(s) in a row, train.max_nonfinite = {self.max_nonfinite}): "
                f"the fit diverged; lower train.lr (now {lr:.3g}), set train.clip_grad_norm, or look for "
                f"NaN/inf values in the images; checkpoints of earlier epochs are intact"
            )
        return False

    def _optimizer_step(self) -> None:
        state = self.state
        if self.clip > 0:
            state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
        if state.ema is not None:
            state.ema.update()
        if self.per_step_schedule:
            state.scheduler.step()

    def _gradient_sync(self, stepping: bool) -> contextlib.AbstractContextManager[Any]:
        """Under DDP, gradients are summed across ranks only on the batch that ends a group."""
        if self.dist.enabled and not stepping and isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _last_of_group(self, index: int) -> bool:
        last_of_epoch = self.batches_per_epoch > 0 and index == self.batches_per_epoch - 1
        return self.pending + 1 >= self.accumulate or last_of_epoch

    def _group_size(self) -> int:
        """The loss divisor: ``accumulate``, or fewer batches for the epoch's short last group, so
        each optimizer step averages over the batches it holds."""
        if self.batches_per_epoch <= 0:
            return self.accumulate
        return max(1, min(self.accumulate, self.batches_per_epoch - self.group_start))


def _touch_all(output: Any) -> torch.Tensor:
    """A zero loss that still reaches every output, so DDP's gradient sync sees each parameter."""
    outputs = list(output) if isinstance(output, (list, tuple)) else [logits_of(output)]
    tensors = [t for t in outputs if isinstance(t, torch.Tensor)]
    return sum((t.float().sum() * 0.0 for t in tensors[1:]), tensors[0].float().sum() * 0.0)
