"""segtrack: lifecycle hooks and plugins for the PyTorch training loop of segmentation models.

This module is the whole public surface, for users and for plugin authors: every name in
``__all__`` keeps its meaning between versions (records only ever gain fields). Training:
``SegmentationTrainer`` (the types of what it takes in code: ``Loss``, ``OptimizerFactory``,
``SchedulerFactory``, ``Inferer``), ``load_settings`` (``Settings``), ``sliding_window``; a loop of one's own:
``FitSession`` (the one path every loop emits hooks through; ``segtrack.integrations`` adapts
Lightning and Ignite/MONAI engines to it); studies: ``run_study`` with a ``TrialSource`` (a
searching plugin's). Plugins: ``hookimpl``, ``Loop`` (what a hook's ``trainer`` argument offers),
``PluginManager``/``get_plugin_manager`` (one per fit's owner), the records
hooks receive (``RunInfo``, ``EpochResult``, ...; ``freeze``/``thaw``), settings schemas
(``Setting``, ``checked_section``, ``is_*``, ``one_of``), secrets (``secret_keys``, ``redact``,
``MASK``), the class colours (``colour_mask``). Errors: ``SegtrackError`` and its kinds. Sub-packages
(``segtrack.loop``, ``segtrack.data``, ...) are internal and may change without notice; the
first-party plugins import nothing else, and a test holds every plugin to that.

Importing segtrack loads no plugin, no torch, no tracking library and not even pluggy: every name
is imported on first use (a shipper process that needs only the errors starts in a fraction of the
time).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# onnxruntime >= 1.29 sends usage telemetry from native code (a DNS lookup seconds after a session
# starts) unless this is set before it loads; every entry point imports segtrack first. A value the
# user set is kept.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

if TYPE_CHECKING:  # imported lazily at run time (__getattr__); named here for type checkers and editors
    import pluggy

    from segtrack.config.schema import Setting, checked_section, is_bool, is_int, is_number, is_str, one_of
    from segtrack.config.secrets import MASK, redact, secret_keys
    from segtrack.config.settings import Settings, load_settings
    from segtrack.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        ModelError,
        PluginHookError,
        PluginLoadError,
        SegtrackError,
        TrainingDiverged,
    )
    from segtrack.inference.export import read_metadata as export_metadata
    from segtrack.inference.palette import colour_mask
    from segtrack.inference.predict import Predictor, from_onnx
    from segtrack.inference.windowed import sliding_window
    from segtrack.loop.losses import Loss
    from segtrack.loop.recipe import OptimizerFactory, SchedulerFactory
    from segtrack.loop.study import TrialSource, check_study_name, run_study
    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.loop.validation import Inferer
    from segtrack.plugins.manager import PluginManager, get_plugin_manager
    from segtrack.plugins.records import (
        CheckpointInfo,
        CrossValidationInfo,
        CrossValidationResult,
        EpochResult,
        ExportInfo,
        FitResult,
        PluginFailure,
        RunInfo,
        StepResult,
        StudyInfo,
        StudyResult,
        TrialResult,
        ValidationBatch,
        ValidationResult,
        ValidationSample,
        freeze,
        thaw,
    )
    from segtrack.session.fit_session import FitSession
    from segtrack.session.loop_protocol import Loop

    hookimpl: pluggy.HookimplMarker

__version__ = "0.1.0"

__all__ = [
    "MASK",
    "CheckpointError",
    "CheckpointInfo",
    "ConfigError",
    "CrossValidationInfo",
    "CrossValidationResult",
    "DataError",
    "EpochResult",
    "ExportInfo",
    "FitResult",
    "FitSession",
    "Inferer",
    "Loop",
    "Loss",
    "ModelError",
    "OptimizerFactory",
    "PluginFailure",
    "PluginHookError",
    "PluginLoadError",
    "PluginManager",
    "Predictor",
    "RunInfo",
    "SchedulerFactory",
    "SegmentationTrainer",
    "SegtrackError",
    "Setting",
    "Settings",
    "StepResult",
    "StudyInfo",
    "StudyResult",
    "TrainingDiverged",
    "TrialResult",
    "TrialSource",
    "ValidationBatch",
    "ValidationResult",
    "ValidationSample",
    "__version__",
    "check_study_name",
    "checked_section",
    "colour_mask",
    "export_metadata",
    "freeze",
    "from_onnx",
    "get_plugin_manager",
    "hookimpl",
    "is_bool",
    "is_int",
    "is_number",
    "is_str",
    "load_settings",
    "one_of",
    "redact",
    "run_study",
    "secret_keys",
    "sliding_window",
    "thaw",
]

# every name is imported on first use: a process that needs only errors and records (an MLflow
# shipper: a process of its own per fit) starts without pluggy, the schema or the trainer
_LIGHT = {
    "segtrack.config.schema": "Setting checked_section is_bool is_int is_number is_str one_of",
    "segtrack.config.secrets": "MASK redact secret_keys",
    "segtrack.errors": "CheckpointError ConfigError DataError ModelError PluginHookError PluginLoadError "
    "SegtrackError TrainingDiverged",
    "segtrack.plugins.records": "CheckpointInfo CrossValidationInfo CrossValidationResult EpochResult ExportInfo "
    "FitResult PluginFailure RunInfo StepResult StudyInfo StudyResult TrialResult ValidationBatch ValidationResult "
    "ValidationSample freeze thaw",
}
_LAZY = {name: module for module, names in _LIGHT.items() for name in names.split()} | {
    "SegmentationTrainer": "segtrack.loop.trainer",
    "FitSession": "segtrack.session.fit_session",
    "Loop": "segtrack.session.loop_protocol",
    "Loss": "segtrack.loop.losses",
    "OptimizerFactory": "segtrack.loop.recipe",
    "SchedulerFactory": "segtrack.loop.recipe",
    "Inferer": "segtrack.loop.validation",
    "PluginManager": "segtrack.plugins.manager",
    "get_plugin_manager": "segtrack.plugins.manager",
    "Settings": "segtrack.config.settings",
    "load_settings": "segtrack.config.settings",
    "sliding_window": "segtrack.inference.windowed",
    "colour_mask": "segtrack.inference.palette",
    # what `segtrack predict --onnx` runs (the MLflow model's pyfunc serves it), and what an export records
    "Predictor": "segtrack.inference.predict",
    "from_onnx": "segtrack.inference.predict",
    "export_metadata": "segtrack.inference.export:read_metadata",
    "run_study": "segtrack.loop.study",
    "TrialSource": "segtrack.loop.study",
    "check_study_name": "segtrack.loop.study",
}


def __getattr__(name: str) -> Any:
    if name == "hookimpl":
        import pluggy

        value = pluggy.HookimplMarker("segtrack")
    elif name in _LAZY:
        import importlib

        module, _, attribute = _LAZY[name].partition(":")
        value = getattr(importlib.import_module(module), attribute or name)
    else:
        raise AttributeError(f"module 'segtrack' has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value
