"""Exceptions a user sees. Each message names the problem and the fix."""

from __future__ import annotations


class SegtrackError(Exception):
    """Base class: the CLI prints these without a traceback and exits non-zero."""

    exit_code = 1


class ConfigError(SegtrackError):
    """Settings are missing, malformed or out of range."""

    exit_code = 2


class DataError(SegtrackError):
    """The dataset is empty, unreadable or inconsistent."""


class ModelError(SegtrackError):
    """A model's output does not fit the data: wrong type, channel count or size."""


class CheckpointError(SegtrackError):
    """A checkpoint is corrupt, unsafe, from another model, or cannot be written."""


class TrainingDiverged(SegtrackError):
    """The loss stayed non-finite for ``train.max_nonfinite`` consecutive training steps."""


class PluginLoadError(SegtrackError):
    """A plugin could not be imported or registered (fatal only with plugins.strict)."""


class PluginHookError(SegtrackError):
    """A plugin's hook raised while plugins.strict is true."""

    def __init__(self, plugin: str, hook: str, error: BaseException):
        self.plugin, self.hook, self.error = plugin, hook, error
        super().__init__(
            f"plugin {plugin!r} raised in hook {hook!r}: {type(error).__name__}: {error} "
            f"(plugins.strict is true; set plugins.strict=false to report and continue, "
            f"or add {plugin!r} to plugins.disabled)"
        )


class PeerLost(KeyboardInterrupt):
    """Another rank of this job died and the launcher stopped this one (torchrun sends SIGTERM).

    A ``KeyboardInterrupt`` so it passes plugin isolation like the signal it comes from; the fit's
    status is ``failed``, not ``interrupted``: nobody asked for the stop.
    """

    exit_code = 1
