"""How a fit trains: the optimizer and learning-rate schedule, built from settings (``train.*``)
or from a user's factories, and a readable description of each for the trackers."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from segtrack.errors import ConfigError

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def build_optimizer(
    model: torch.nn.Module, train: Mapping[str, Any], factory: OptimizerFactory | None
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if factory is not None:
        optimizer = factory(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"the optimizer factory returned {type(optimizer).__name__}: it must take the model's "
                f"parameters and return a torch.optim.Optimizer"
            )
        return optimizer
    lr, decay = train["lr"], train["weight_decay"]
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=train["momentum"], nesterov=train["nesterov"], weight_decay=decay
        )
    kind = torch.optim.AdamW if train["optimizer"] == "adamw" else torch.optim.Adam
    return kind(params, lr=lr, betas=tuple(train["betas"]), weight_decay=decay)


class LearningRateFactor:
    """The factor on the base learning rate after ``t`` schedule steps (epochs or optimizer steps):
    a linear warm-up from 1/100 over ``warmup`` steps, then cosine, poly, step or constant over
    the remaining ``total - warmup`` steps. A plain object so the schedule's state is picklable."""

    def __init__(self, kind: str, total: int, warmup: int, poly_power: float, step_size: int, step_gamma: float):
        self.kind, self.total, self.warmup = kind, max(1, total), min(warmup, max(0, total - 1))
        self.poly_power, self.step_size, self.step_gamma = poly_power, step_size, step_gamma

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return 0.01 + 0.99 * t / self.warmup
        t, span = t - self.warmup, max(1, self.total - self.warmup)
        progress = min(t, span) / span
        if self.kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "poly":
            return (1 - progress) ** self.poly_power
        if self.kind == "step":
            return self.step_gamma ** (t // self.step_size)
        return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    train: Mapping[str, Any],
    steps_per_epoch: int,
    factory: SchedulerFactory | None,
) -> Any:
    """The schedule, stepped once per epoch or once per optimizer step (``train.scheduler_interval``)."""
    if factory is not None:
        scheduler = factory(optimizer)
        if not callable(getattr(scheduler, "step", None)) or not callable(getattr(scheduler, "state_dict", None)):
            raise ConfigError(
                f"the scheduler factory returned {type(scheduler).__name__}: it must take the optimizer "
                f"and return a torch.optim.lr_scheduler scheduler"
            )
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and train["scheduler_interval"] == "step":
            raise ConfigError(
                "the scheduler factory returned ReduceLROnPlateau, which steps on the monitored metric once per "
                'epoch: set train.scheduler_interval = "epoch"'
            )
        return scheduler
    per_step = train["scheduler_interval"] == "step"
    if per_step and steps_per_epoch <= 0:
        raise ConfigError(
            'train.scheduler_interval = "step" needs to know the steps per epoch, but the training '
            'DataLoader has no length: give it one or use "epoch"'
        )
    unit = steps_per_epoch if per_step else 1
    factor = LearningRateFactor(
        train["scheduler"],
        train["epochs"] * unit,
        train["warmup_epochs"] * unit,
        train["poly_power"],
        train["step_size"],
        train["step_gamma"],
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
