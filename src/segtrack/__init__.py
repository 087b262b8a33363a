"""segtrack: lifecycle hooks and plugins for the PyTorch training loop of segmentation models.

Importing segtrack loads no plugin and neither torch nor any tracking library; the trainer and
records are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from segtrack.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    PluginHookError,
    PluginLoadError,
    SegtrackError,
)
from segtrack.schema import Setting

if TYPE_CHECKING:  # imported lazily at run time (__getattr__); named here for type checkers and editors
    from segtrack.config import load_settings
    from segtrack.trainer import SegmentationTrainer
    from segtrack.windowed import sliding_window

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("segtrack")

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelError",
    "PluginHookError",
    "PluginLoadError",
    "SegmentationTrainer",
    "SegtrackError",
    "Setting",
    "__version__",
    "hookimpl",
    "load_settings",
    "sliding_window",
]


def __getattr__(name: str) -> Any:
    if name == "SegmentationTrainer":
        from segtrack.trainer import SegmentationTrainer

        return SegmentationTrainer
    if name == "load_settings":
        from segtrack.config import load_settings

        return load_settings
    if name == "sliding_window":
        from segtrack.windowed import sliding_window

        return sliding_window
    raise AttributeError(f"module 'segtrack' has no attribute {name!r}")
