"""An epoch's metrics: per class, the plugins' own (checked, computed on rank 0 and sent to every
rank), and the check that ``checkpoint.monitor`` names one of them."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from segtrack.config.core_schema import METRIC_NAMES
from segtrack.errors import ConfigError
from segtrack.plugins.records import RunInfo, ValidationResult
from segtrack.runtime.distributed import DistContext

log = logging.getLogger("segtrack.trainer")


def builtin_names(class_names: Iterable[str]) -> list[str]:
    per_class = [f"val_{m}_{name}" for name in class_names for m in ("dice", "iou")]
    return [*METRIC_NAMES, "lr", *per_class]


def per_class(class_names: Iterable[str], validation: ValidationResult) -> dict[str, float]:
    """val_dice_<class> and val_iou_<class> for every class seen so far (NaN ones left out)."""
    out = {}
    for name, dice, iou in zip(class_names, validation.per_class_dice, validation.per_class_iou):
        if not math.isnan(dice):
            out[f"val_dice_{name}"], out[f"val_iou_{name}"] = dice, iou
    return out


def check_monitor(monitor: str, names: Iterable[str]) -> None:
    names = list(names)
    if monitor not in names:
        raise ConfigError(
            f"checkpoint.monitor = {monitor!r} is not a metric of this fit: use one of {', '.join(names)}"
        )


def plugin_metrics(
    hooks: Any,
    dist: DistContext,
    monitor: str,
    taken: Mapping[str, float],
    **hook_arguments: Any,
) -> dict[str, float]:
    """``validation_metrics`` of every plugin, checked on rank 0 and sent to every rank, so all
    ranks agree on the monitored value and the best epoch. A plugin that fails is reported; if the
    monitor was its metric, this epoch cannot be the best one (the fit goes on)."""
    merged: dict[str, float] = {}
    failed_before = _failure_count(hooks.failures())
    if dist.is_main:
        for plugin, values in hooks.collect("validation_metrics", **hook_arguments).items():
            try:
                merged.update(_checked(values, taken, merged))
            except (TypeError, ValueError) as exc:
                hooks.report_failure(plugin, "validation_metrics", exc)
    failed = _failure_count(hooks.failures()) > failed_before
    merged, failed = dist.broadcast_from_main((merged, failed))
    if monitor not in taken and monitor not in merged:
        if not failed and not monitor.startswith(("val_dice_", "val_iou_")):
            check_monitor(monitor, [*taken, *merged])
        run: RunInfo | None = hook_arguments.get("run")
        epoch = hook_arguments["result"].epoch + 1
        why = "the plugin computing it failed" if failed else "its class is in neither truth nor prediction"
        log.warning(
            "epoch %d%s has no %s (checkpoint.monitor): %s; this epoch cannot be the best, the fit goes on",
            epoch,
            f" of {run.run_name}" if run is not None else "",
            monitor,
            why,
        )
    return merged


def _checked(values: Any, taken: Mapping[str, float], merged: Mapping[str, float]) -> dict[str, float]:
    """One plugin's return value: a dict of new names to numbers."""
    if not isinstance(values, Mapping):
        raise TypeError(f"validation_metrics returned {type(values).__name__}, not a dict of floats")
    out = {}
    for name, value in values.items():
        if not isinstance(name, str) or name in taken or name in merged:
            raise ValueError(f"metric name {name!r} is already taken or not a string: rename it")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(f"metric {name!r} is {type(value).__name__}, not a number")
        out[name] = float(value)
    return out


def _failure_count(failures: Iterable[Any]) -> int:
    return sum(f.count for f in failures if f.hook == "validation_metrics")
