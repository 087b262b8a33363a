"""Plugins for tests: a recorder of every hook call, and one that raises at a chosen epoch."""

from __future__ import annotations

from typing import Any

from segtrack import hookimpl


class Recorder:
    """Records every hook call, in order, with its arguments."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.saved_state = {"count": 0}

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def _record(self, hook: str, **kwargs: Any) -> None:
        self.calls.append((hook, kwargs))

    @hookimpl
    def settings_loaded(self, settings):
        self._record("settings_loaded", settings=settings)

    @hookimpl
    def fit_start(self, trainer, run):
        self._record("fit_start", trainer=trainer, run=run)

    @hookimpl
    def epoch_start(self, trainer, run, epoch):
        self._record("epoch_start", epoch=epoch)

    @hookimpl
    def train_batch_end(self, trainer, run, step):
        self._record("train_batch_end", step=step)

    @hookimpl
    def validation_end(self, trainer, run, result):
        self._record("validation_end", result=result)

    @hookimpl
    def epoch_end(self, trainer, run, epoch):
        self._record("epoch_end", epoch=epoch)

    @hookimpl
    def checkpoint_saved(self, trainer, run, checkpoint):
        self._record("checkpoint_saved", checkpoint=checkpoint)

    @hookimpl
    def model_exported(self, trainer, run, export):
        self._record("model_exported", export=export)

    @hookimpl
    def fit_exception(self, trainer, run, error):
        self._record("fit_exception", error=error)

    @hookimpl
    def fit_end(self, trainer, run, result):
        self._record("fit_end", result=result, run=run)

    @hookimpl
    def cross_validation_start(self, trainer, info):
        self._record("cross_validation_start", info=info)

    @hookimpl
    def cross_validation_end(self, trainer, result):
        self._record("cross_validation_end", result=result)

    @hookimpl
    def state_dict(self):
        self.saved_state["count"] += 1
        self._record("state_dict")
        return dict(self.saved_state)

    @hookimpl
    def load_state_dict(self, state):
        self._record("load_state_dict", state=state)
        self.saved_state = dict(state)


class RaiseAt:
    """Raises ``error`` at epoch ``at``: from ``epoch_start`` (``kind="epoch_start"``), or from
    ``checkpoint_saved`` of that epoch's best checkpoint (``kind="checkpoint_best"``).
    A KeyboardInterrupt passes the plugin isolation, like Ctrl-C."""

    name = "raise_at"

    def __init__(self, at: int, error: BaseException, kind: str = "epoch_start") -> None:
        if kind not in ("epoch_start", "checkpoint_best"):
            raise ValueError(f"RaiseAt kind {kind!r}: use 'epoch_start' or 'checkpoint_best'")
        self.at, self.error, self.kind = at, error, kind

    @hookimpl
    def epoch_start(self, epoch):
        if self.kind == "epoch_start" and epoch == self.at:
            raise self.error

    @hookimpl
    def checkpoint_saved(self, checkpoint):
        if self.kind == "checkpoint_best" and checkpoint.kind == "best" and checkpoint.epoch == self.at:
            raise self.error


def first_party_plugins() -> list[str]:
    """Installed first-party plugins: core tests that autoload disable them to stay isolated."""
    from segtrack.plugins.manager import installed_entry_points

    return [name for name in ("mlflow", "analytics") if name in installed_entry_points()]
