"""Everything the trainer carries from epoch to epoch: the source of the checkpoint payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from segtrack.loop.ema import WeightAverage
from segtrack.runtime import checkpoint
from segtrack.session.best import BestEpoch


@dataclass
class FitState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    best: BestEpoch  # the best and the last epoch: the fit session records them, checkpoints carry them
    global_step: int = 0
    ema: WeightAverage | None = None  # train.ema: the averaged weights, validated and exported

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights a fit validates, saves as ``model`` and exports: the average when train.ema is on."""
        return self.ema.model if self.ema is not None else self.model

    @property
    def monitor(self) -> str:
        return self.best.monitor

    @property
    def epoch(self) -> int:
        """The last completed epoch (-1 before the first)."""
        return self.best.last_epoch

    @property
    def start_epoch(self) -> int:
        return self.best.last_epoch + 1

    # -- checkpoints -------------------------------------------------------------------------

    def payload(
        self, signature: dict, run_name: str, fold: int | None, plugin_states: dict, config: dict | None = None
    ) -> dict[str, Any]:
        """The checkpoint: a plain dict with named keys, read back by ``restore``."""
        payload = {
            "format": checkpoint.FORMAT,
            "version": checkpoint.VERSION,
            "model_signature": signature,
            "epoch": self.best.last_epoch,
            "global_step": self.global_step,
            "model": self.eval_model.state_dict(),  # what predict and export load
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_value": self.best.value,
            "best_epoch": self.best.epoch,
            "best_metrics": self.best.metrics,
            "metrics": self.best.last_metrics,
            "run_name": run_name,
            "fold": fold,
            "rng": checkpoint.rng_state(),
            "plugins": plugin_states,
            "config": config or {},  # the settings of the fit: `segtrack predict` rebuilds model and data steps
        }
        if self.ema is not None:  # the weights being trained, for an exact resume
            payload["training_model"] = self.model.state_dict()
            payload["ema_updates"] = self.ema.updates
        return payload

    def restore(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload.get("training_model", payload["model"]))
        if self.ema is not None:
            self.ema.load_state_dict(payload["model"])
            self.ema.updates = int(payload.get("ema_updates", 0))
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(_schedule_position(self.scheduler, payload["scheduler"]))
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):  # the lr at that position, as set now
            for group, base, factor in zip(
                self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas
            ):
                group["lr"] = base * factor(self.scheduler.last_epoch)
        self.scaler.load_state_dict(payload["scaler"])
        self.global_step = payload["global_step"]
        self.best.load_state_dict(best_state(payload, self.best.monitor))
        checkpoint.restore_rng(payload["rng"])


def best_state(payload: dict[str, Any], monitor: str) -> dict[str, Any]:
    """A trainer checkpoint's best and last epoch in ``BestEpoch.state_dict`` form, taken as the
    resumed fit's monitor (trainer checkpoints keep the values, not the monitor's name)."""
    return {
        "monitor": monitor,
        "value": payload["best_value"],
        "epoch": payload["best_epoch"],
        "metrics": payload.get("best_metrics", {}),
        "last_epoch": payload["epoch"],
        "last_metrics": payload.get("metrics", {}),
    }


def _schedule_position(scheduler: Any, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved LambdaLR's position, without its factor's settings: a resume with more epochs (or
    another schedule) follows the settings it runs with, not those the checkpoint was written with."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and "lr_lambdas" in saved:
        return {**saved, "lr_lambdas": [None] * len(saved["lr_lambdas"])}
    return saved
