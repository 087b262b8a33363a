"""segtrack's plugins under Lightning: a ``Callback`` that drives one ``FitSession`` per fit.

::

    trainer = lightning.Trainer(callbacks=[SegtrackCallback()])
    trainer.fit(module, train_loader, val_loader)            # one tracked run
    trainer.fit(module, train_loader, val_loader, ckpt_path="last.ckpt")   # the same run, continued

- epoch metrics: what the module ``self.log``s, read at the end of each epoch's validation (before
  Lightning's ``ModelCheckpoint`` saves, so a checkpoint always holds the epoch it saved);
  ``train_loss`` is the mean of the epoch's ``training_step`` losses (times the gradient
  accumulation Lightning divides them by). Per-step values (``*_step``, and the plain name of a
  metric logged per step and per epoch) and Lightning's epoch aggregates of training metrics
  (``*_epoch``, computed after validation) are left out; an epoch without validation is recorded at
  its end, aggregates included.
- params: the module's ``hparams``; the optimizer and scheduler are described from what
  ``configure_optimizers`` built.
- state: the session's rides in Lightning's checkpoint (``state_dict``/``load_state_dict``).
- model: at the end of the fit the best checkpoint of ``ModelCheckpoint`` is exported to ONNX
  (``export.enabled``), with the first validation batch as the example.
- hooks fire on rank 0; a stop a plugin asks for there stops every rank; a plugin that raises is
  reported and training goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl

from segtrack.integrations.metrics import RunningMean, first_input, scalars
from segtrack.session.fit_session import FitSession

log = logging.getLogger("segtrack.lightning")


class SegtrackCallback(pl.Callback):
    """Tracks a Lightning fit through segtrack's plugins.

    :param settings: as for ``FitSession``: ``None``, a dict of what it changes, ``load_settings(...)``.
    :param plugins: plugin objects registered besides the installed ones.
    :param run_name: the run's name (default ``run.name``).
    """

    def __init__(self, settings: Any = None, plugins: Iterable[Any] = (), *, run_name: str | None = None):
        self._settings = settings
        self._plugins = tuple(plugins)
        self._run_name = run_name
        self.session: FitSession | None = None  # the fit running now
        self.result: Any = None  # the last fit's FitResult
        self._state: dict[str, Any] | None = None  # restored from a checkpoint, or the last fit's
        self._train_loss = RunningMean()
        self._recorded_epoch = -1  # the last epoch handed to epoch_end
        self._example: Any = None  # one validation input, for the ONNX export
        self._reported: dict[str, tuple[str, int]] = {}  # checkpoint kind -> (path, mtime) last reported
        self._epoch_lr: float | None = None

    # -- state in Lightning's checkpoint -----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self.session is None:
            return {"session": self._state} if self._state else {}
        return {"session": self.session.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = state_dict.get("session")

    # -- the fit -----------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        resumed = trainer.current_epoch > 0 or trainer.global_step > 0  # fit(ckpt_path=...): the state is its
        self.session = FitSession(
            self._settings,
            self._plugins,
            model=pl_module,
            run_name=self._run_name,
            resume_state=self._state if resumed else None,
            train_data=_one_loader(trainer.train_dataloader),
            val_data=_one_loader(trainer.val_dataloaders),
            params=dict(pl_module.hparams) if pl_module.hparams else None,
            epochs=trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None,
            optimizer=trainer.optimizers[0] if trainer.optimizers else None,
            scheduler=trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None,
            loop="lightning",
            handle_sigterm=False,  # Lightning handles SIGTERM; it reaches on_exception
            rank=0,
            world_size=trainer.world_size,
        )
        self._state, self._reported, self.result = None, {}, None
        self._recorded_epoch = trainer.current_epoch - 1
        self.session.start()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_loss.reset()
        if self.session is None:
            return
        self._report_checkpoints(trainer)  # what the last epoch's checkpoint callbacks wrote after us
        # the epoch's learning rate (Lightning steps epoch schedulers before the epoch's validation)
        self._epoch_lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
        self.session.epoch_start(trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.session is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss * trainer.accumulate_grad_batches  # Lightning hands the loss divided by it
        self._train_loss.add(loss)
        if self.session.hooks.has_implementations("train_batch_end"):  # a float per batch only when wanted
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
            self.session.batch_end(trainer.global_step, loss, epoch=trainer.current_epoch, batch_index=batch_idx, lr=lr)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._example is None and trainer.is_global_zero:
            self._example = first_input(batch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the end-of-epoch validation (not the sanity check, not a mid-epoch one): the epoch is complete
        if self.session is None or trainer.sanity_checking or not trainer.is_last_batch:
            return
        logged = scalars(trainer.callback_metrics)
        per_step = {name.removesuffix("_step") for name in logged if name.endswith("_step")}
        metrics = {k: v for k, v in logged.items() if not k.endswith(("_step", "_epoch")) and k not in per_step}
        self._record_epoch(trainer, metrics)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is not None:
            if self._recorded_epoch < trainer.current_epoch:  # no validation this epoch
                metrics = {}
                for name, value in scalars(trainer.callback_metrics).items():
                    if not name.endswith("_step"):
                        metrics[name.removesuffix("_epoch")] = value
                self._record_epoch(trainer, metrics)
            self._report_checkpoints(trainer)
        # a stop asked on rank 0 (where hooks run) stops every rank: Lightning does not share should_stop
        stop = self.session is not None and self.session.should_stop
        if trainer.world_size > 1:
            stop = bool(trainer.strategy.broadcast(stop, src=0))
        if stop:
            trainer.should_stop = True

    def _record_epoch(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        assert self.session is not None
        mean = self._train_loss.mean()
        if mean is not None:
            metrics["train_loss"] = mean
        if self._epoch_lr is not None and "lr" not in metrics:
            metrics["lr"] = self._epoch_lr
        self._recorded_epoch = trainer.current_epoch
        self.session.epoch_end(trainer.current_epoch, metrics, global_step=trainer.global_step)

    def _report_checkpoints(self, trainer: pl.Trainer) -> None:
        """``ModelCheckpoint``'s files written since the last look, as ``checkpoint_saved`` (best, last)."""
        assert self.session is not None
        callback = trainer.checkpoint_callback
        if callback is None:
            return
        found = {"best": getattr(callback, "best_model_path", ""), "last": getattr(callback, "last_model_path", "")}
        for kind, path in found.items():
            if not path or not os.path.isfile(path):
                continue
            stamp = (path, os.stat(path).st_mtime_ns)  # last.ckpt is rewritten in place every epoch
            if self._reported.get(kind) != stamp:
                self._reported[kind] = stamp
                self.session.checkpoint_saved(path, kind=kind, epoch=max(self._recorded_epoch, 0))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is None:
            return
        self._report_checkpoints(trainer)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if self.session.settings["export"]["enabled"] and best and self._example is not None:
            import torch

            saved = torch.load(best, map_location="cpu", weights_only=False)
            self.session.export(self._example, pl_module, weights=saved["state_dict"], epoch=saved.get("epoch"))
        stopped_early = trainer.max_epochs and 0 < trainer.current_epoch < trainer.max_epochs
        if trainer.should_stop and stopped_early and not self.session.should_stop:
            self.session.request_stop("trainer.should_stop (e.g. EarlyStopping)")
        self._end(None)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.session is not None:
            self._end(_as_interrupt(exception))

    def _end(self, error: BaseException | None) -> None:
        """``fit_end``; the session is closed, its state kept for a checkpoint written afterwards."""
        assert self.session is not None
        self._state = self.session.state_dict()
        self.result = self.session.end(error)
        self.session = None


def _as_interrupt(exception: BaseException) -> BaseException:
    """Lightning turns SIGTERM into its own ``SIGTERMException``: recorded as interrupted, as Ctrl-C."""
    try:
        from lightning.pytorch.utilities.exceptions import SIGTERMException
    except ImportError:  # older Lightning
        return exception
    if isinstance(exception, SIGTERMException):
        interrupt = KeyboardInterrupt("SIGTERM")
        interrupt.__context__ = exception
        return interrupt
    return exception


def _one_loader(loaders: Any) -> Any:
    """The one DataLoader Lightning holds, or None where it holds several (or none)."""
    import torch

    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if len(loaders) == 1 else None
    return loaders if isinstance(loaders, torch.utils.data.DataLoader) else None
