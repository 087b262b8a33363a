"""Everything a fit carries from epoch to epoch: the source of both the checkpoint payload and the
``FitResult``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from segtrack.loop.ema import WeightAverage
from segtrack.plugins.records import FitResult, PluginFailure, freeze
from segtrack.runtime import checkpoint


@dataclass
class FitState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    monitor: str
    mode: str  # "max" | "min"
    epoch: int = -1  # last completed epoch
    global_step: int = 0
    best_value: float = math.nan
    best_epoch: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    status: str = "completed"
    error: str | None = None
    paths: dict[str, str] = field(default_factory=dict)  # "best"/"last" -> checkpoint path
    ema: WeightAverage | None = None  # train.ema: the averaged weights, validated and exported

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights a fit validates, saves as ``model`` and exports: the average when train.ema is on."""
        return self.ema.model if self.ema is not None else self.model

    def __post_init__(self):
        self.best_value = -math.inf if self.mode == "max" else math.inf

    @property
    def start_epoch(self) -> int:
        return self.epoch + 1

    def record_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Take one epoch's metrics; True when the monitored one improved."""
        self.epoch, self.last_metrics = epoch, metrics
        value = metrics.get(self.monitor, math.nan)  # missing when its plugin failed: not a best epoch
        improved = not math.isnan(value) and (
            value > self.best_value if self.mode == "max" else value < self.best_value
        )
        if improved:
            self.best_value, self.best_epoch, self.best_metrics = value, epoch, dict(metrics)
        return improved

    # -- checkpoints -------------------------------------------------------------------------

    def payload(
        self, signature: dict, run_name: str, fold: int | None, plugin_states: dict, config: dict | None = None
    ) -> dict[str, Any]:
        """The checkpoint: a plain dict with named keys, read back by ``restore``."""
        payload = {
            "format": checkpoint.FORMAT,
            "version": checkpoint.VERSION,
            "model_signature": signature,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.eval_model.state_dict(),  # what predict and export load
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "metrics": self.last_metrics,
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
        self.epoch, self.global_step = payload["epoch"], payload["global_step"]
        self.best_value, self.best_epoch = payload["best_value"], payload["best_epoch"]
        self.best_metrics = dict(payload.get("best_metrics", {}))
        self.last_metrics = dict(payload.get("metrics", {}))
        checkpoint.restore_rng(payload["rng"])

    # -- outcome -----------------------------------------------------------------------------

    def result(
        self,
        *,
        epochs_completed: int,
        export,
        export_error,
        stop_reason,
        failures: tuple[PluginFailure, ...],
        fold: int | None,
        duration_s: float,
    ) -> FitResult:
        return FitResult(
            status=self.status,
            epochs_completed=epochs_completed,
            best_value=self.best_value,
            best_epoch=self.best_epoch,
            monitor=self.monitor,
            final_metrics=freeze(self.last_metrics),
            best_metrics=freeze(self.best_metrics),
            best_checkpoint=self.paths.get("best"),
            last_checkpoint=self.paths.get("last"),
            export=export,
            export_error=export_error,
            stop_reason=stop_reason,
            error=self.error,
            plugin_failures=failures,
            fold=fold,
            duration_s=duration_s,
        )


def _schedule_position(scheduler: Any, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved LambdaLR's position, without its factor's settings: a resume with more epochs (or
    another schedule) follows the settings it runs with, not those the checkpoint was written with."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and "lr_lambdas" in saved:
        return {**saved, "lr_lambdas": [None] * len(saved["lr_lambdas"])}
    return saved
