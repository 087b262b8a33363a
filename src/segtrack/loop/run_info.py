"""What a run is, as trackers record it: its settings with the parts passed in code described, and
its data fingerprints once the first epoch has computed them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from segtrack.config.secrets import mask_secrets, secret_keys
from segtrack.data.plan import FitData
from segtrack.plugins.records import RunInfo
from segtrack.session import parts

# settings only segtrack's own parts read: when a part is passed in code they are left out of the
# records, which describe that part instead (a record never shows a setting the fit did not use)
BUILTIN_ONLY = {
    "model": ("name", "factory", "kwargs", "in_channels", "width", "depth"),
    "data": (
        "source",
        "factory",
        "kwargs",
        "path",
        "normalize",
        "crop",
        "crop_foreground",
        "num_samples",
        "image_size",
    ),
    "augment": ("augment",),
    "loss": ("loss", "class_weights", "focal_gamma", "dice_weight"),
    "optimizer": ("optimizer", "lr", "weight_decay", "momentum", "nesterov", "betas"),
    "scheduler": ("scheduler", "poly_power", "step_size", "step_gamma", "warmup_epochs"),
}


@dataclass(frozen=True)
class Brought:
    """What a fit was given in code instead of settings (None: the configured part). ``optimizer``
    and ``scheduler`` are the built objects where a fit has them, else the factories."""

    model: Any = None
    train_data: Any = None
    val_data: Any = None
    loss: Any = None
    optimizer: Any = None
    scheduler: Any = None


def recorded_config(config: Mapping[str, Any], brought: Brought = Brought()) -> dict[str, Any]:
    """The settings as trackers record them: every key configs/.secrets.toml defines is ``***`` (at
    any depth); each part passed in code is described (class, readable constructor arguments, an
    optimizer's defaults, a factory by what it builds) in place of the settings it replaced."""
    recorded = mask_secrets(config, secret_keys())
    model, data, train = dict(recorded["model"]), dict(recorded["data"]), dict(recorded["train"])
    if brought.model is not None:
        kept = {"in_channels": model["in_channels"]} if brought.train_data is None else {}  # it shapes the data
        model = {**parts.describe_model(brought.model), **kept}
    if brought.train_data is not None:
        data = {k: v for k, v in data.items() if k not in BUILTIN_ONLY["data"]}
        data["train"] = parts.describe_data(brought.train_data)
        if brought.val_data is not None:
            data["val"] = parts.describe_data(brought.val_data)
        train = _without(train, "augment")
    described = {
        "loss": (brought.loss, parts.describe_loss),
        "optimizer": (brought.optimizer, parts.describe_optimizer_factory),
        "scheduler": (brought.scheduler, parts.describe_scheduler_factory),
    }
    for part, (given, describe) in described.items():
        if given is not None:
            train = {**_without(train, part), part: describe(given)}
    return {**recorded, "model": model, "data": data, "train": train}


def _without(section: Mapping[str, Any], part: str) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in BUILTIN_ONLY[part]}


def cross_validated(config: Mapping[str, Any], folds: int | None, data: FitData | None = None) -> Mapping[str, Any]:
    """The recorded settings as a cross-validation ran them: ``data.folds`` is the folds it used (``cv
    --folds`` wins over the setting); ``data.val_fraction`` is the share a fold validated on (the
    CV as a whole: 1/k), not the setting a plain fit would split by."""
    if not folds:
        return config
    if data is not None and data.num_train + data.num_val:
        share = data.num_val / (data.num_train + data.num_val)
    else:
        share = 1 / folds
    return {**config, "data": {**config["data"], "folds": folds, "val_fraction": round(share, 4)}}


def with_loaded_fingerprints(run: RunInfo, data: FitData) -> RunInfo:
    """After the first epoch of data fingerprinted as it loads, the run with its digests."""
    if run.train_sha256 or data.fingerprint_kind != "loaded":
        return run
    train_sha256, val_sha256 = data.loaded_fingerprints()
    return replace(run, train_sha256=train_sha256, val_sha256=val_sha256)
