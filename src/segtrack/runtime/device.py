"""The device a fit runs on, AMP on it, and the global random generators seeded."""

from __future__ import annotations

import random

import numpy as np
import torch

from segtrack.errors import ConfigError
from segtrack.runtime.distributed import DistContext


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    """``train.device``: ``auto`` (CUDA when present), ``cpu``, ``cuda`` (this rank's GPU under
    torchrun) or ``cuda:N``; a device that is not there is one sentence."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f'train.device = {name!r} but no CUDA device is available: use "auto" or "cpu"')
        if name == "cuda":
            return torch.device("cuda", ctx.local_rank)
        index = int(name.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(f"train.device = {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(name)


def amp_enabled(setting: str | bool, device: torch.device) -> bool:
    """``train.amp``: ``auto`` is on for CUDA only; ``true`` needs CUDA."""
    amp = device.type == "cuda" if setting == "auto" else bool(setting)
    if amp and device.type != "cuda":
        raise ConfigError('train.amp = true needs a CUDA device: set train.amp = "auto" or false on CPU')
    return amp


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
