"""segtrack's plugins under Lightning: a ``Callback`` that drives one ``FitSession`` per fit.

::

    trainer = lightning.Trainer(callbacks=[SegtrackCallback()])
    trainer.fit(module, train_loader, val_loader)            # one tracked run
    trainer.fit(module, train_loader, val_loader, ckpt_path="last.ckpt")   # the same run, continued

- epoch metrics: what the module ``self.log``s, read at the end of each epoch's validation (before
  Lightning's ``ModelCheckpoint`` saves, so a checkpoint always holds the epoch it saved);
  ``train_loss`` is the mean of the epoch's ``training_step`` losses. Per-step values (``*_step``)
  and Lightning's epoch aggregates of training metrics (``*_epoch``, computed after validation) are
  left out; an epoch without validation is recorded at its end, aggregates included.
- params: the module's ``hparams``; the optimizer and scheduler are described from what
  ``configure_optimizers`` built.
- state: the session's rides in Lightning's checkpoint (``state_dict``/``load_state_dict``).
- model: at the end of the fit the best checkpoint of ``ModelCheckpoint`` is exported to ONNX
  (``export.enabled``), with the first validation batch as the example.
- rank 0 only under DDP; a plugin that raises is reported and training goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl

from segtrack.integrations.metrics import RunningMean, scalar, scalars
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
        self.session: FitSession | None = None
        self._resume_state: dict[str, Any] | None = None
        self._train_loss = RunningMean()
        self._recorded_epoch = -1  # the last epoch handed to epoch_end
        self._example: Any = None  # one validation input, for the ONNX export
        self._reported: dict[str, str] = {}  # checkpoint kind -> the path last reported
        self._epoch_lr: float | None = None

    # -- state in Lightning's checkpoint -----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self.session is None:
            return {"session": self._resume_state} if self._resume_state else {}
        return {"session": self.session.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = state_dict.get("session")

    # -- the fit -----------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.session = FitSession(
            self._settings,
            self._plugins,
            model=pl_module,
            run_name=self._run_name,
            resume_state=self._resume_state,
            train_data=_dataset_loader(trainer.train_dataloader),
            val_data=_dataset_loader(trainer.val_dataloaders),
            params=dict(pl_module.hparams) if pl_module.hparams else None,
            epochs=trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None,
            optimizer=trainer.optimizers[0] if trainer.optimizers else None,
            scheduler=trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None,
            loop="lightning",
            handle_sigterm=False,  # Lightning handles SIGTERM; it reaches on_exception
            rank=0,
            world_size=trainer.world_size,
        )
        self._resume_state, self._reported = None, {}
        self._recorded_epoch = trainer.current_epoch - 1
        self.session.start()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_loss.reset()
        # the epoch's learning rate (Lightning steps epoch schedulers before the epoch's validation)
        self._epoch_lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
        if self.session is not None:
            self.session.epoch_start(trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.session is None:
            return
        loss = scalar(outputs.get("loss") if isinstance(outputs, dict) else outputs)
        self._train_loss.add(loss)
        if loss is not None:
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
            self.session.batch_end(
                trainer.global_step, loss, epoch=trainer.current_epoch, batch_index=batch_idx, lr=lr, batch_size=0
            )

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
            images = _inputs_of(batch)
            if images is not None:
                self._example = images[:1].detach().cpu()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the end-of-epoch validation (not the sanity check, not a mid-epoch one): the epoch is complete
        if self.session is None or trainer.sanity_checking or not trainer.is_last_batch:
            return
        metrics = {k: v for k, v in scalars(trainer.callback_metrics).items() if not k.endswith(("_step", "_epoch"))}
        self._record_epoch(trainer, metrics)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is None:
            return
        if self._recorded_epoch < trainer.current_epoch:  # no validation this epoch
            metrics = {}
            for name, value in scalars(trainer.callback_metrics).items():
                if name.endswith("_step"):
                    continue
                metrics[name.removesuffix("_epoch")] = value
            self._record_epoch(trainer, metrics)
        self._report_checkpoints(trainer)

    def _record_epoch(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        assert self.session is not None
        mean = self._train_loss.mean()
        if mean is not None:
            metrics["train_loss"] = mean
        if self._epoch_lr is not None and "lr" not in metrics:
            metrics["lr"] = self._epoch_lr
        self._recorded_epoch = trainer.current_epoch
        self.session.epoch_end(trainer.current_epoch, metrics, global_step=trainer.global_step)
        if self.session.should_stop:  # a plugin asked (e.g. a pruned trial)
            trainer.should_stop = True

    def _report_checkpoints(self, trainer: pl.Trainer) -> None:
        """``ModelCheckpoint``'s new files as ``checkpoint_saved`` (best and last)."""
        assert self.session is not None
        callback = trainer.checkpoint_callback
        if callback is None:
            return
        found = {"best": getattr(callback, "best_model_path", ""), "last": getattr(callback, "last_model_path", "")}
        for kind, path in found.items():
            if path and self._reported.get(kind) != path and os.path.isfile(path):
                self._reported[kind] = path
                self.session.checkpoint_saved(path, kind=kind, epoch=trainer.current_epoch)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is None:
            return
        self._report_checkpoints(trainer)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if self.session.settings["export"]["enabled"] and best and self._example is not None:
            self.session.export(self._example, pl_module, weights=best)
        stopped_early = trainer.max_epochs and 0 < trainer.current_epoch < trainer.max_epochs
        if trainer.should_stop and stopped_early and not self.session.should_stop:
            self.session.request_stop("trainer.should_stop (e.g. EarlyStopping)")
        self.session.end()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.session is None:
            return
        self.session.end(_as_interrupt(exception))


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


def _dataset_loader(loaders: Any) -> Any:
    """The one DataLoader Lightning holds, or None where it holds several (or none)."""
    import torch

    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if len(loaders) == 1 else None
    return loaders if isinstance(loaders, torch.utils.data.DataLoader) else None


def _inputs_of(batch: Any) -> Any:
    """The input images of a batch: ``(x, y)``, ``[x, y]`` or a dict with ``"image"``."""
    import torch

    if isinstance(batch, dict):
        batch = batch.get("image", batch.get("img"))
    elif isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    return batch if isinstance(batch, torch.Tensor) and batch.dim() in (4, 5) else None
