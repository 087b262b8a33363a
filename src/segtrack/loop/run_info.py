"""What a run is, as trackers record it: where its data comes from, its settings with a recipe
passed in code described, and its data fingerprints once the first epoch has computed them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from segtrack.config.secrets import mask_secrets, secret_keys
from segtrack.data.plan import FitData
from segtrack.plugins.records import RunInfo


def recorded_config(config: Mapping[str, Any], recipe: Mapping[str, str]) -> Mapping[str, Any]:
    """The settings as trackers record them: every key configs/.secrets.toml defines is ``***`` (at
    any depth); a loss, optimizer or scheduler passed in code replaces ``train.loss``/
    ``train.optimizer``/``train.scheduler`` by ``python:<its description>``."""
    recorded = mask_secrets(config, secret_keys())
    if recipe:
        recorded["train"] = {**recorded["train"], **{key: f"python:{text}" for key, text in recipe.items()}}
    return recorded


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
