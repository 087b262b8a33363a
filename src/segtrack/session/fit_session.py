"""FitSession: the one path that emits a fit's hooks, for segtrack's trainer and for any other loop.

It owns what every loop must get the same: the plugins and settings (resolved once), the run record,
the best epoch by ``checkpoint.monitor``/``checkpoint.mode``, plugin state for resume, plugin
isolation, and the end-of-fit rules (``fit_exception`` then a time-bounded ``fit_end``, plugin
errors only reported while the fit is failing, SIGTERM as an interrupt). Hooks fire on rank 0.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from segtrack.config.secrets import mask_secrets, secret_keys
from segtrack.config.settings import Settings
from segtrack.errors import ConfigError, PeerLost
from segtrack.plugins.manager import PluginManager
from segtrack.plugins.records import EpochResult, ExportInfo, FitResult, RunInfo, StepResult, freeze, thaw
from segtrack.runtime.distributed import DistContext, context_from_env, leave_together_at_exit
from segtrack.runtime.signals import SigtermAsInterrupt, interrupt_behind
from segtrack.session import parts
from segtrack.session.best import BestEpoch
from segtrack.session.plugin_host import open_plugins
from segtrack.session.run_record import run_record

log = logging.getLogger("segtrack.session")
STATE_FORMAT = "segtrack.fit"
STATE_VERSION = 1
CHECKPOINT_KINDS = ("best", "last", "epoch")
# the core sections a loop of one's own uses; the others (model, data, train, infer, export) describe
# segtrack's trainer and would be false in its records
OWN_LOOP_SECTIONS = {"run": ("name", "experiment"), "checkpoint": ("monitor", "mode")}


class FitSession:
    """One fit's hooks, driven by any training loop.

    ::

        with FitSession(settings, model=model, run_name="hand") as fit:   # fit_start
            for epoch in range(fit.start_epoch, epochs):
                ...                                                       # your training and validation
                is_best = fit.epoch_end(epoch, {"train_loss": tl, "val_dice": vd})
                torch.save({"model": model.state_dict(), "segtrack": fit.state_dict()}, "last.pt")
                fit.checkpoint_saved("last.pt", epoch=epoch, is_best=is_best)
        # leaving: fit_end, status completed, stopped (a plugin asked: fit.should_stop), failed
        # (an exception, re-raised) or interrupted (Ctrl-C, SIGTERM)

    :param settings: ``None`` (every layer: defaults, configs/settings.toml, ``SEGTRACK_*``), a dict of
        only what it changes (e.g. ``{"mlflow": {"tracking_uri": ...}}``), ``load_settings(...)``.
    :param plugins: plugin objects (or classes) registered besides the installed ones.
    :param model: the ``torch.nn.Module`` being trained: its class, readable constructor arguments and
        size are recorded, and ``export`` exports it.
    :param run_name: the run's name (default ``run.name``).
    :param resume_state: what ``state_dict()`` returned, read back from a checkpoint: the same tracking
        run continues and ``start_epoch`` is the epoch after the saved one.
    :param train_data: / :param val_data: the datasets (or DataLoaders), for their size, fingerprint
        (a SHA256 over every sample, as the trainer computes it) and the tracker's dataset inputs.
    :param params: hyperparameters to record (a mapping, nested or flat), e.g. a LightningModule's hparams.
    :param epochs: the epochs the loop is set to run (shown by progress plugins).
    :param optimizer: / :param scheduler: / :param loss: the loop's own, described in the records.
    :param loop: what drives the session ("own", or an adapter's name), recorded as ``RunInfo.loop``.
    :param handle_sigterm: SIGTERM ends the fit as interrupted (Ctrl-C's path) while inside ``with``;
        framework adapters whose framework handles signals pass ``False``.
    :param rank: / :param world_size: for a framework that starts its own processes (Lightning, Ignite):
        this process's global rank and the number of processes. ``None`` reads torchrun's environment
        (then every rank opens its session: they meet in one collective). Hooks fire on rank 0 only.
    """

    def __init__(
        self,
        settings: Any = None,
        plugins: Iterable[Any] = (),
        *,
        model: Any = None,
        run_name: str | None = None,
        resume_state: Mapping[str, Any] | None = None,
        train_data: Any = None,
        val_data: Any = None,
        params: Mapping[str, Any] | None = None,
        epochs: int | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        loss: Any = None,
        loop: str = "own",
        handle_sigterm: bool = True,
        rank: int | None = None,
        world_size: int = 1,
    ):
        _check_own_loop_arguments(model, run_name, resume_state, params, epochs)
        # a framework that runs its own processes (Lightning, Ignite) says which this is; else torchrun's
        # environment is read, and every rank must open its session (they meet in one collective)
        dist = context_from_env() if rank is None else DistContext(rank=rank, world_size=world_size)
        hooks, resolved = open_plugins(settings, plugins, None, dist.rank)
        config = thaw(resolved)
        name = run_name or config["run"]["name"]
        described = _own_loop_config(config, name, model, train_data, val_data, epochs, optimizer, scheduler, loss)
        recorded = mask_secrets(parts.merged(described, _nested(params or {})), secret_keys())
        run = _own_loop_run(hooks, dist, recorded, name, model, train_data, val_data, epochs, loop, resume_state)
        best = BestEpoch(config["checkpoint"]["monitor"], config["checkpoint"]["mode"])
        self._bind(hooks, resolved, run, best, None, resume_state, dist, handle_sigterm, model)
        self._every_rank = rank is None  # every rank opened a session: stop requests are agreed on by all

    @classmethod
    def _attached(
        cls,
        *,
        hooks: PluginManager,
        settings: Settings,
        run: RunInfo,
        best: BestEpoch,
        loop: Any,
        dist: DistContext,
        resume_state: Mapping[str, Any] | None = None,
        model: Any = None,
        global_step: int = 0,
    ) -> FitSession:
        """A session over plugins and settings a loop already opened (the trainer opens them once for
        all its fits); hooks receive ``loop`` as their ``trainer`` argument."""
        session = cls.__new__(cls)
        session._bind(hooks, settings, run, best, loop, resume_state, dist, True, model)
        session._global_step = global_step
        return session

    def _bind(
        self,
        hooks: PluginManager,
        settings: Settings,
        run: RunInfo,
        best: BestEpoch,
        loop: Any,
        resume_state: Mapping[str, Any] | None,
        dist: DistContext,
        handle_sigterm: bool,
        model: Any,
    ) -> None:
        self.hooks, self._settings, self.run, self.best = hooks, settings, run, best
        self._loop = loop if loop is not None else self
        self.dist = dist
        self.model = model
        self.paths: dict[str, str] = {}  # checkpoint kind -> path, as the loop reported them
        self.result: FitResult | None = None
        self.export_info: ExportInfo | None = None
        self.export_error: str | None = None
        self._resume_state = dict(resume_state) if resume_state else None
        self._handle_sigterm = handle_sigterm
        self._sigterm: SigtermAsInterrupt | None = None
        self._stop_reason: str | None = None
        self._epoch = best.last_epoch + 1
        self._global_step = 0
        self._steps_reported = False
        self._started = 0.0
        self._warned_monitor = False
        self._warned_repeat = False
        self._epoch_open = False  # between epoch_start (or an epoch's first batch) and its epoch_end
        self._batch_in_epoch = 0  # batches of the epoch running now
        self._every_rank = False  # set by the constructor of a loop of one's own (the trainer agrees on stops itself)
        if self._resume_state is not None and loop is None:
            self._restore_own(self._resume_state)

    # -- the Loop protocol: what plugins may read and call ------------------------------------

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def device(self) -> Any:
        import torch

        return torch.device(_device_of(self.model))

    @property
    def batches_per_epoch(self) -> int:
        return self.run.batches_per_epoch

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def request_stop(self, reason: str, all_folds: bool = False) -> None:
        """Ask the fit to end after the current epoch; the loop reads ``should_stop``."""
        self._stop_reason = reason or "stop requested"

    # -- for the loop ----------------------------------------------------------------------------

    @property
    def start_epoch(self) -> int:
        """The first epoch to train: 0, or the one after the epoch a resumed state was saved at."""
        return self.best.last_epoch + 1

    @property
    def should_stop(self) -> bool:
        """A plugin asked the fit to stop (``request_stop``): end the loop after this epoch."""
        return self._stop_reason is not None

    @property
    def global_step(self) -> int:
        return self._global_step

    def __enter__(self) -> FitSession:
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.end(exc)  # the exception, if any, propagates

    def start(self) -> None:
        """Restore the plugins' saved state (a resumed fit), then ``fit_start``. A failure here ends the
        fit as failed (``fit_exception``, ``fit_end``) and propagates."""
        if self._handle_sigterm:
            self._sigterm = SigtermAsInterrupt(self.dist).__enter__()
        self._started = time.perf_counter()
        try:
            for name, plugin_state in (self._resume_state or {}).get("plugins", {}).items():
                self.hooks.call_one(name, "load_state_dict", state=plugin_state)
            self.hooks.call("fit_start", trainer=self._loop, run=self.run)
        except BaseException as exc:
            self.end(exc)
            raise

    def epoch_start(self, epoch: int) -> None:
        """An epoch begins (optional for a loop of one's own: ``batch_end`` counts epochs without it)."""
        self._check_open("epoch_start")
        self._epoch, self._epoch_open, self._batch_in_epoch = epoch, True, 0
        self.hooks.call("epoch_start", trainer=self._loop, run=self.run, epoch=epoch)

    def batch_end(
        self,
        step: int,
        loss: Any,
        *,
        epoch: int | None = None,
        batch_index: int | None = None,
        lr: float = math.nan,
        batch_size: int = 0,
    ) -> None:
        """One training batch done: ``step`` is the global step (batches since the fit began, counting
        resumed ones), ``loss`` a float or a one-element tensor. Fires ``train_batch_end``."""
        self._check_open("batch_end")
        self._global_step = int(step)
        self._steps_reported = True
        if not self._epoch_open:  # the first batch of the epoch after the last one ended
            self._epoch, self._epoch_open, self._batch_in_epoch = self.best.last_epoch + 1, True, 0
        self._batch_in_epoch += 1
        if not self.hooks.has_implementations("train_batch_end"):
            return
        result = StepResult(
            epoch=self._epoch if epoch is None else epoch,
            batch_index=self._batch_in_epoch - 1 if batch_index is None else batch_index,
            global_step=int(step),
            loss=_number("loss", loss),
            lr=float(lr),
            batch_size=int(batch_size),
        )
        self.hooks.call("train_batch_end", trainer=self._loop, run=self.run, step=result)

    def validation_end(self, result: Any, run: RunInfo | None = None) -> None:
        """The trainer's validation pass (``ValidationResult``); ``run`` replaces the record when the
        first epoch made its fingerprints known."""
        if run is not None:
            self.run = run
        self.hooks.call("validation_end", trainer=self._loop, run=self.run, result=result)

    def epoch_end(
        self,
        epoch: int,
        metrics: Mapping[str, Any],
        *,
        global_step: int | None = None,
        duration_s: float = 0.0,
    ) -> bool:
        """One epoch done: ``metrics`` are any numbers (floats, ints, one-element tensors) by name.
        Records the best epoch by ``checkpoint.monitor`` and fires ``epoch_end``; returns whether this
        epoch is the best so far. ``global_step`` defaults to the last ``batch_end`` step (to
        ``epoch + 1`` when the loop reports no batches)."""
        self._check_open("epoch_end")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ConfigError(f"epoch_end(epoch={epoch!r}): pass the epoch's 0-based index, an int >= 0")
        if not isinstance(metrics, Mapping):
            raise ConfigError(
                f"epoch_end(metrics={type(metrics).__name__}): pass a dict of metric name -> number, "
                "e.g. {'train_loss': 0.4, 'val_dice': 0.8}"
            )
        values = {str(name): _number(f"metric {name!r}", value) for name, value in metrics.items()}
        if epoch <= self.best.last_epoch and not self._warned_repeat:
            self._warned_repeat = True
            log.warning(
                "epoch_end(epoch=%d) repeats an epoch this run recorded (it had %d): a tracker keeps the first "
                "record of each step; resume the loop at FitSession.start_epoch (%d)",
                epoch,
                self.best.last_epoch + 1,
                self.start_epoch,
            )
        self._warn_missing_monitor(values)
        if global_step is None:
            global_step = self._global_step if self._steps_reported else epoch + 1
        self._global_step = max(self._global_step, int(global_step))
        self._epoch, self._epoch_open = epoch, False
        is_best = self.best.record(epoch, values)
        result = EpochResult(
            epoch=epoch,
            metrics=freeze(values),
            monitor=self.best.monitor,
            is_best=is_best,
            best_value=self.best.value,
            best_epoch=self.best.epoch,
            duration_s=float(duration_s),
            global_step=int(global_step),
        )
        self.hooks.call("epoch_end", trainer=self._loop, run=self.run, epoch=result)
        if self._every_rank and self.dist.enabled:  # a stop asked on rank 0 (where hooks run) stops every rank
            self._agree_on_stop()
        return is_best

    def _agree_on_stop(self) -> None:
        stop = self.dist.broadcast_from_main(self._stop_reason)
        if stop and not self._stop_reason:
            self._stop_reason = stop

    def checkpoint_saved(
        self,
        path: str | os.PathLike,
        *,
        epoch: int | None = None,
        is_best: bool = False,
        kind: str | None = None,
        size_bytes: int | None = None,
    ) -> None:
        """A checkpoint file is in place. ``kind``: "best", "last" or "epoch"; without it the file is
        the "last" checkpoint and, when ``is_best``, also the best one at this epoch (fired for
        both). Fires ``checkpoint_saved`` once per kind."""
        from segtrack.plugins.records import CheckpointInfo

        self._check_open("checkpoint_saved")
        if not self.dist.is_main:  # checkpoints are rank 0's (other ranks may not see the file)
            return
        if kind is not None and kind not in CHECKPOINT_KINDS:
            raise ConfigError(f"checkpoint_saved(kind={kind!r}): use one of {', '.join(CHECKPOINT_KINDS)}")
        path = str(path)
        if size_bytes is None:
            try:
                size_bytes = os.stat(path).st_size
            except OSError:
                raise ConfigError(
                    f"checkpoint_saved({path!r}): no such file: call it once the checkpoint is written"
                ) from None
        kinds = [kind] if kind else ["last", *(["best"] if is_best else [])]
        if kind:  # a best checkpoint implied by is_best is this epoch's "last" file: it is overwritten later
            self.paths[kind] = path
        else:
            self.paths["last"] = path
        epoch = self.best.last_epoch if epoch is None else epoch
        value = self.best.last_metrics.get(self.best.monitor, math.nan)
        for each in kinds:
            info = CheckpointInfo(
                path=path, kind=each, epoch=epoch, monitor=self.best.monitor, value=value, size_bytes=size_bytes
            )
            self.hooks.call("checkpoint_saved", trainer=self._loop, run=self.run, checkpoint=info)

    def exported(self, export: ExportInfo) -> None:
        """A loop that exported the model itself: records the export and fires ``model_exported``."""
        self.export_info = export
        self.hooks.call("model_exported", trainer=self._loop, run=self.run, export=export)

    def export(
        self,
        example: Any,
        model: Any = None,
        *,
        path: str | os.PathLike | None = None,
        weights: str | os.PathLike | Mapping[str, Any] | None = None,
        epoch: int | None = None,
    ) -> ExportInfo | None:
        """The model (default: the session's) as ONNX, checked in onnxruntime against torch on
        ``example`` (a batch tensor ``(N, C, *spatial)``), then ``model_exported`` (a tracker logs it
        as a model). ``weights``: a state dict, or a checkpoint file holding one (bare, under
        ``"model"`` or Lightning's ``"state_dict"``), e.g. the best epoch's: loaded into the model for
        the export, then the model's own weights, device and mode are put back.
        ``path`` defaults to ``<export.dir>/<run name>.onnx``. On rank 0 only; a model that cannot be
        exported gives one warning and None (the fit goes on)."""
        self._check_open("export")
        if not self.dist.is_main:
            return None
        import torch

        from segtrack.inference.export import export_onnx, parity_holds

        model = self.model if model is None else model
        if not isinstance(model, torch.nn.Module):
            raise ConfigError("export() needs the model: pass model= here or to FitSession(model=...)")
        if not isinstance(example, torch.Tensor) or example.dim() not in (4, 5):
            raise ConfigError(
                "export(example=...) takes one input batch tensor (N, C, H, W) or (N, C, D, H, W), "
                f"got {type(example).__name__}{tuple(example.shape) if isinstance(example, torch.Tensor) else ''}"
            )
        settings = self._settings["export"]
        target = Path(path) if path is not None else Path(settings["dir"]) / f"{self.run.run_name}.onnx"
        epoch = (self.best.epoch if self.best.epoch >= 0 else self.best.last_epoch) if epoch is None else epoch
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with _weights_for_export(model, weights):
                diff, scale = export_onnx(model, example, target, settings["opset"])
        except Exception as exc:
            self.export_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.warning("ONNX export skipped: %s; the fit goes on", self.export_error)
            return None
        info = ExportInfo(
            path=str(target),
            format="onnx",
            opset=settings["opset"],
            epoch=max(epoch, 0),
            input_shape=tuple(example.shape),
            max_abs_diff=diff,
            parity_ok=parity_holds(diff, scale, settings["tolerance"]),
            logit_scale=scale,
            tolerance=float(settings["tolerance"]),
        )
        self.exported(info)
        return info

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps to resume this fit: the best and last epoch, the global step and
        every plugin's state (a tracker's run id). Pass it back as ``resume_state``."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "run_name": self.run.run_name,
            "global_step": self._global_step,
            "best": self.best.state_dict(),
            "plugins": self.plugin_states(),
        }

    def plugin_states(self) -> dict[str, Any]:
        """Every plugin's ``state_dict`` by plugin name (what a checkpoint keeps for resume)."""
        return self.hooks.collect("state_dict")

    def ending(self) -> None:
        """The fit is about to end (a loop's final cleanup runs): a SIGTERM from now on waits until
        ``fit_end`` has returned, so the plugins finish within a launcher's grace period."""
        if self._sigterm is not None:
            self._sigterm.ending = True

    def _check_open(self, call: str) -> None:
        if self.result is not None:
            raise ConfigError(f"{call}() came after the fit ended: call it inside the `with FitSession(...)` block")

    @contextlib.contextmanager
    def sigterm_held(self) -> Iterator[None]:
        """A SIGTERM arriving inside the block (a checkpoint write) is raised once the block is done."""
        if self._sigterm is None:
            yield
            return
        with self._sigterm.held():
            yield

    def end(self, error: BaseException | None = None) -> FitResult:
        """The fit ends: ``fit_exception`` when ``error`` is given, then ``fit_end`` (each plugin
        bounded in time; plugin errors reported, never raised, while the fit fails). Runs once;
        returns the ``FitResult``."""
        if self.result is not None:
            return self.result
        self.ending()
        status, message = ("stopped" if self._stop_reason else "completed"), None
        if error is not None:
            interrupt = interrupt_behind(error)
            status = "interrupted" if interrupt is not None and not isinstance(interrupt, PeerLost) else "failed"
            message = f"{type(error).__name__}: {error}"
            with self.lenient(force=True):
                self.hooks.call("fit_exception", trainer=self._loop, run=self.run, error=error)
        result = FitResult(
            status=status,
            epochs_completed=self.best.last_epoch + 1,
            best_value=self.best.value,
            best_epoch=self.best.epoch,
            monitor=self.best.monitor,
            final_metrics=freeze(self.best.last_metrics),
            best_metrics=freeze(self.best.metrics),
            best_checkpoint=self.paths.get("best"),
            last_checkpoint=self.paths.get("last"),
            export=self.export_info,
            export_error=self.export_error,
            stop_reason=self._stop_reason,
            error=message,
            plugin_failures=self.hooks.failures(),
            fold=self.run.fold,
            duration_s=time.perf_counter() - self._started if self._started else 0.0,
        )
        try:
            with self.lenient(force=error is not None):
                self.hooks.call_bounded(
                    "fit_end", self.hooks.fit_end_timeout, trainer=self._loop, run=self.run, result=result
                )
        finally:
            self.result = replace(result, plugin_failures=self.hooks.failures())  # with failures in fit_end
            leave_together_at_exit(status in ("completed", "stopped"))
            sigterm, self._sigterm = self._sigterm, None
            if sigterm is not None:
                sigterm.__exit__(type(error) if error else None, error, None)  # a SIGTERM held back is raised now
        return self.result

    def lenient(self, force: bool = False) -> contextlib.AbstractContextManager[None]:
        return lenient(self.hooks, force)

    # -- resume of a loop of one's own -----------------------------------------------------------

    def _restore_own(self, state: dict[str, Any]) -> None:
        self.best.load_state_dict(state["best"])
        self._global_step = int(state.get("global_step", 0))
        self._steps_reported = self._global_step > 0
        self._epoch = self.best.last_epoch + 1
        self.run = replace(
            self.run, start_epoch=self.best.last_epoch + 1, resumed_from=self.run.resumed_from or "resume_state"
        )

    def _warn_missing_monitor(self, values: Mapping[str, float]) -> None:
        if self.best.monitor in values or self._warned_monitor:
            return
        self._warned_monitor = True
        log.warning(
            "checkpoint.monitor = %r is not among the metrics passed to epoch_end (%s): no epoch is marked "
            "best; pass it, or set checkpoint.monitor (and checkpoint.mode) to one of them",
            self.best.monitor,
            ", ".join(sorted(values)) or "none",
        )


# -- helpers ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def lenient(hooks: PluginManager, force: bool = False) -> Iterator[None]:
    """While an exception is propagating (or ``force``), plugin errors are reported, never raised
    (``plugins.strict`` is for a healthy fit: a failing one must still end its runs)."""
    import sys

    saved = hooks.strict
    if force or sys.exc_info()[1] is not None:
        hooks.strict = False
    try:
        yield
    finally:
        hooks.strict = saved


def _number(what: str, value: Any) -> float:
    """A metric as a float: numbers, numpy scalars and one-element tensors."""
    if hasattr(value, "item") and callable(value.item):
        with contextlib.suppress(ValueError, RuntimeError):
            value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what} is a {type(value).__name__}: pass a number (a float, or a one-element tensor)")
    return float(value)


def _check_own_loop_arguments(model: Any, run_name: Any, resume_state: Any, params: Any, epochs: Any) -> None:
    import torch

    if model is not None and not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model is a {type(model).__name__}: pass the torch.nn.Module you train (or None)")
    if run_name is not None and (not isinstance(run_name, str) or not run_name.strip()):
        raise ConfigError(f"run_name = {run_name!r}: pass a non-empty string (or None for run.name)")
    if resume_state is not None:
        if not isinstance(resume_state, Mapping) or resume_state.get("format") != STATE_FORMAT:
            raise ConfigError(
                "resume_state is not what FitSession.state_dict() returned: pass the dict saved under "
                "checkpoint['segtrack'] (or None for a fresh fit)"
            )
        if resume_state.get("version", 0) > STATE_VERSION:
            raise ConfigError(
                f"resume_state was written by a newer segtrack (format version {resume_state['version']}): "
                "upgrade segtrack to resume it"
            )
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"params is a {type(params).__name__}: pass a dict of hyperparameter name -> value")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
        raise ConfigError(f"epochs = {epochs!r}: pass the number of epochs the loop runs (an int >= 1), or None")


def _nested(params: Mapping[str, Any]) -> dict[str, Any]:
    """User params as records keep them: nested mappings kept, values that are not plain become text."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out[str(key)] = _nested(value)
        else:
            out[str(key)] = value if parts.readable(value) else repr(value)[:500]
    return out


def _own_loop_config(
    config: Mapping[str, Any],
    run_name: str,
    model: Any,
    train_data: Any,
    val_data: Any,
    epochs: int | None,
    optimizer: Any,
    scheduler: Any,
    loss: Any,
) -> dict[str, Any]:
    """The settings a loop of one's own runs with, as records keep them: the core keys the session
    uses, every plugin's section, and a description of what the loop brought; never the trainer's
    settings (model.name, train.lr, ...) that this loop does not use."""
    recorded: dict[str, Any] = {
        section: {key: config[section][key] for key in keys} for section, keys in OWN_LOOP_SECTIONS.items()
    }
    recorded["run"]["name"] = run_name
    from segtrack.config.core_schema import CORE_SECTIONS

    for section, values in config.items():
        if section not in CORE_SECTIONS:
            recorded[section] = values
    if model is not None:
        recorded["model"] = parts.describe_model(model)
    if train_data is not None or val_data is not None:
        recorded["data"] = {
            kind: parts.describe_data(given)
            for kind, given in (("train", train_data), ("val", val_data))
            if given is not None
        }
    described = {
        "optimizer": parts.describe_optimizer_factory(optimizer) if optimizer is not None else None,
        "scheduler": parts.describe_scheduler_factory(scheduler) if scheduler is not None else None,
        "loss": parts.describe_loss(loss) if loss is not None else None,
        "epochs": epochs,
    }
    train = {key: value for key, value in described.items() if value is not None}
    if train:
        recorded["train"] = train
    return recorded


def _own_loop_run(
    hooks: PluginManager,
    dist: DistContext,
    config: Mapping[str, Any],
    run_name: str,
    model: Any,
    train_data: Any,
    val_data: Any,
    epochs: int | None,
    loop: str,
    resume_state: Mapping[str, Any] | None,
) -> RunInfo:
    from torch.utils.data import DataLoader

    from segtrack.data.configured import data_source
    from segtrack.data.plan import batch_count, sample_count, whole_fingerprint

    train_sha, train_kind = whole_fingerprint(train_data) if train_data is not None else ("", "")
    val_sha, val_kind = whole_fingerprint(val_data) if val_data is not None else ("", "")
    kind = train_kind if train_kind == val_kind else ""
    dims, classes = _model_geometry(model)
    start = int(resume_state["best"].get("last_epoch", -1)) + 1 if resume_state else 0
    return run_record(
        hooks=hooks,
        dist=dist,
        config=config,
        run_name=run_name,
        device=_device_of(model),
        train_sha256=train_sha if kind else "",
        val_sha256=val_sha if kind else "",
        num_train=sample_count(train_data),
        num_val=sample_count(val_data),
        num_parameters=sum(p.numel() for p in model.parameters()) if model is not None else 0,
        start_epoch=start,
        resumed_from="resume_state" if resume_state else None,
        batches_per_epoch=batch_count(train_data) if isinstance(train_data, DataLoader) else 0,
        spatial_dims=dims,
        num_classes=classes,
        class_names=tuple(str(k) for k in range(classes)),
        model_name=parts.qualified(model) if model is not None else "",
        data_source=data_source({}, train_data) if train_data is not None else "",
        fingerprint_kind=kind,
        max_epochs=epochs or 0,
        loop=loop,
    )


def _model_geometry(model: Any) -> tuple[int, int]:
    """(spatial dims, classes) read off the model: its convolutions' kind and its last one's output
    channels; (2, 0) when it has none."""
    import torch

    if model is None:
        return 2, 0
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    if not convs:
        return 2, 0
    return (3 if isinstance(convs[-1], torch.nn.Conv3d) else 2), int(convs[-1].out_channels)


def _device_of(model: Any) -> str:
    if model is None:
        return "cpu"
    first = next(iter(model.parameters()), None)
    return str(first.device) if first is not None else "cpu"


@contextlib.contextmanager
def _weights_for_export(model: Any, weights: Any) -> Iterator[None]:
    """``model`` with ``weights`` loaded (when given) for the export, then as it was: its weights,
    device and train/eval mode (the export runs it on the CPU in eval mode). No copy of the model is
    made: a framework's module may hold its whole trainer."""
    first = next(iter(model.parameters()), None)
    device, training = (first.device if first is not None else None), model.training
    kept = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if weights is not None else None
    try:
        if weights is not None:
            model.load_state_dict(_state_dict_of(weights))
        yield
    finally:
        if kept is not None:
            model.load_state_dict(kept)
        if device is not None:
            model.to(device)
        model.train(training)


def _state_dict_of(weights: Any) -> Mapping[str, Any]:
    """A state dict from a state dict or a checkpoint file: bare, or under ``"model"``, Lightning's
    ``"state_dict"``, or ``"net"``/``"network"`` (MONAI's ``CheckpointSaver`` names)."""
    import torch

    if not isinstance(weights, Mapping):
        weights = torch.load(weights, map_location="cpu", weights_only=False)
    for key in ("model", "state_dict", "net", "network"):
        inner = weights.get(key)
        if isinstance(inner, Mapping):
            return inner
    return weights
