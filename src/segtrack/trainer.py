"""SegmentationTrainer: a linear fit loop, for the built-in UNet or any user model and dataset,
that emits the lifecycle hooks of segtrack.hookspecs."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtrack import __version__, checkpoint
from segtrack.config import (
    METRIC_NAMES,
    checked_settings,
    class_names,
    ignore_index,
    inference_config,
    load_settings,
    plain,
    resolved_dict,
    validate,
)
from segtrack.data import ArrayDataset, configured_data
from segtrack.distributed import DistContext, context_from_env
from segtrack.ema import WeightAverage
from segtrack.errors import CheckpointError, ConfigError, DataError, PeerLost
from segtrack.fit_state import FitState
from segtrack.fitdata import DataPlan, FitData, stream_seed
from segtrack.losses import Loss, builtin_loss
from segtrack.metrics import ConfusionCounts
from segtrack.model import model_signature, user_model_signature
from segtrack.plugins import PluginManager, get_plugin_manager, installed_entry_points
from segtrack.recipe import OptimizerFactory, SchedulerFactory, build_optimizer, build_scheduler, describe
from segtrack.records import (
    CheckpointInfo,
    CrossValidationInfo,
    CrossValidationResult,
    EpochResult,
    ExportInfo,
    FitResult,
    RunInfo,
    StepResult,
    ValidationBatch,
    ValidationResult,
    ValidationSample,
    freeze,
)
from segtrack.registry import build_model, spatial_multiple
from segtrack.samples import as_pair, check_class_ids, check_logits, logits_of
from segtrack.signals import SigtermAsInterrupt, interrupt_behind
from segtrack.train_step import TrainStep
from segtrack.validation_batches import ValidationBatches
from segtrack.windowed import sliding_window

log = logging.getLogger("segtrack.trainer")
_RECIPE_HELP = {
    "loss": "(logits, target) -> scalar tensor",
    "optimizer": "a factory params -> torch.optim.Optimizer",
    "scheduler": "a factory optimizer -> torch.optim.lr_scheduler.LRScheduler",
}


class SegmentationTrainer:
    """Trains a segmentation model and calls every plugin's hooks at each phase boundary.

    :param settings: a Dynaconf object from ``segtrack.load_settings`` or a plain nested dict of
        every section; ``None`` loads the defaults (and ``configs/settings.toml`` if present).
    :param plugins: plugin objects (or classes) to register besides the installed ones.
    :param model: any ``torch.nn.Module`` mapping a float batch ``(N, C, H, W)`` or ``(N, C, D, H, W)``
        to logits ``(N, data.num_classes, ...)``, or to a dict holding them under ``"out"``, or a
        tuple starting with them. ``None`` builds the configured model (``model.*``). Every fit
        (each cross-validation fold) starts from the weights it has when passed in.
    :param train_data: a map-style ``Dataset`` or a ``DataLoader``; samples are ``(image, mask)``
        or dicts with ``"image"`` and ``"mask"``/``"label"``. ``None`` uses the configured data.
    :param val_data: the same for validation; ``None`` splits ``train_data`` by
        ``data.val_fraction`` (or into folds in ``cv``).
    :param plugin_manager: a prebuilt manager (from ``get_plugin_manager``); ``plugins`` must
        then be empty.
    :param loss: a callable ``(logits, target) -> scalar tensor`` replacing ``train.loss``; ``logits``
        are ``(N, K, *spatial)``, ``target`` ``(N, *spatial)`` int64 class ids with ``-1`` where a pixel
        is ignored (``data.ignore_index`` or padding). Also gives the validation loss.
    :param optimizer: a factory ``params -> torch.optim.Optimizer`` replacing ``train.optimizer``;
        called once per fit (each fold, each resume, each rank builds its own).
    :param scheduler: a factory ``optimizer -> LRScheduler`` replacing ``train.scheduler``, stepped
        per ``train.scheduler_interval`` (``ReduceLROnPlateau`` gets the monitored metric per epoch).
    """

    def __init__(
        self,
        settings: Any = None,
        plugins: Iterable[Any] = (),
        *,
        model: torch.nn.Module | None = None,
        train_data: Any = None,
        val_data: Any = None,
        plugin_manager: PluginManager | None = None,
        loss: Loss | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ):
        if settings is None:
            settings = load_settings()
        self.settings = settings
        self.config = resolved_dict(settings) if not isinstance(settings, Mapping) else plain(settings)
        validate(self.config)
        if model is not None and not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"model is a {type(model).__name__}: pass a torch.nn.Module (or None for the configured model.name)"
            )
        for name, given in (("loss", loss), ("optimizer", optimizer), ("scheduler", scheduler)):
            if given is not None and not callable(given):
                raise ConfigError(f"{name} is a {type(given).__name__}: pass a callable ({_RECIPE_HELP[name]})")
        self._optimizer_factory, self._scheduler_factory = optimizer, scheduler
        self._recipe = {
            key: describe(given) for key, given in (("loss", loss), ("optimizer", optimizer), ("scheduler", scheduler))
            if given is not None
        }  # fmt: skip
        self.dist: DistContext = context_from_env()
        if plugin_manager is not None and list(plugins):
            raise ConfigError("pass plugins either in `plugins` or inside `plugin_manager`, not both")
        self.hooks = plugin_manager or get_plugin_manager(self.config, plugins, rank=self.dist.rank)
        self.hooks.rank = self.dist.rank
        known = set(self.hooks.names()) | set(installed_entry_points()) | set(self.config["plugins"]["disabled"])
        self.config = checked_settings(settings, self.hooks, known)
        self.hooks.call_all_ranks("settings_loaded", settings=freeze(self.config))

        self.device = _resolve_device(self.config["train"]["device"], self.dist)
        amp = self.config["train"]["amp"]
        self.amp = self.device.type == "cuda" if amp == "auto" else bool(amp)
        if self.amp and self.device.type != "cuda":
            raise ConfigError('train.amp = true needs a CUDA device: set train.amp = "auto" or false on CPU')
        data_cfg = self.config["data"]
        self.num_classes, self.dims = data_cfg["num_classes"], data_cfg["dims"]
        self.ignore_index, self.class_names = ignore_index(data_cfg), class_names(data_cfg)
        self._check_monitor(
            self._builtin_metric_names(), final=not self.hooks.has_implementations("validation_metrics")
        )
        if val_data is not None and train_data is None:
            raise ConfigError(
                "val_data was given without train_data: pass train_data too (val_data alone cannot train a model)"
            )
        # the configured model is built once here, so a wrong name or kwargs fails before any work
        multiple = spatial_multiple(
            model if model is not None else build_model(self.config["model"], self.num_classes, self.dims)
        )
        _check_window_fits(self.config["infer"]["roi_size"], multiple)
        builtin, split = None, None
        self.data_source = _data_source(self.config["data"], train_data)
        if train_data is None:
            train_data, val_data, split = configured_data(self.config)
            if isinstance(train_data, ArrayDataset):
                builtin, train_data = train_data, None
        self.data = DataPlan(
            self.config, self.dist, self.device.type == "cuda", train_data, val_data, builtin, split, multiple
        )
        self._user_model = model
        self._inference_config = inference_config(self.config)
        self.infer = self.config["infer"]
        self._loss_fn: Loss = loss if loss is not None else builtin_loss(self.config["train"])
        self._initial_weights = _cpu_copy(model.state_dict()) if model is not None else None
        self.model: torch.nn.Module | None = None
        self.epoch = 0
        self.batches_per_epoch = 0
        self.stop_reason: str | None = None

    # -- public API for plugins ----------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Ask the fit to end after the current epoch (and its checkpoints); status ``stopped``.
        Under torchrun every rank stops after that epoch."""
        self.stop_reason = reason or "stop requested"

    # -- entry points ---------------------------------------------------------------------------

    def fit(self, resume: str | None = None) -> FitResult:
        """One fit on the train/validation data. ``resume``: a checkpoint path, or ``"auto"``
        (``<checkpoint.dir>/last.pt`` when it exists, else a fresh start)."""
        data = self.data.for_split(self.config["data"]["val_fraction"])
        ckpt_dir = Path(self.config["checkpoint"]["dir"])
        return self._fit(data, ckpt_dir, self.config["run"]["name"], resume)

    def cv(self, folds: int | None = None) -> CrossValidationResult:
        """k-fold cross-validation over ``train_data``: one fit per fold, then ``cross_validation_end``."""
        folds = self.config["data"]["folds"] if folds is None else folds
        if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
            raise ConfigError(f"--folds {folds!r} is invalid: cross-validation needs an integer >= 2")
        if self.data.val_dataset is not None or self.data.val_loader is not None:
            raise ConfigError("cv() splits train_data into folds, so val_data would be unused: pass only train_data")
        if folds > self.data.splittable_count:  # checked before any hook, so no tracker opens a CV run
            raise ConfigError(
                f"{folds} folds need at least {folds} samples, the dataset has "
                f"{self.data.splittable_count}: lower --folds"
            )
        name = self.config["run"]["name"]
        cv_id = uuid.uuid4().hex[:12]
        self.hooks.call(
            "cross_validation_start", trainer=self, info=CrossValidationInfo(cv_id, folds, freeze(self.config), name)
        )
        results: list[FitResult] = []
        try:
            for fold in range(folds):
                data = self.data.for_fold(fold, folds)
                ckpt_dir = Path(self.config["checkpoint"]["dir"]) / f"{name}-fold{fold}"
                results.append(
                    self._fit(data, ckpt_dir, f"{name}-fold{fold}", None, fold=fold, num_folds=folds, cv_id=cv_id)
                )
        finally:
            outcome = CrossValidationResult(cv_id, folds, tuple(results), freeze(_summary(results)))
            with self._lenient_if_failing():
                self.hooks.call("cross_validation_end", trainer=self, result=outcome)
        return outcome

    # -- the loop -------------------------------------------------------------------------------

    def _fit(
        self,
        data: FitData,
        ckpt_dir: Path,
        run_name: str,
        resume: str | None,
        fold: int | None = None,
        num_folds: int | None = None,
        cv_id: str | None = None,
    ) -> FitResult:
        hooks = self.hooks
        # setup: the checkpoint to resume (read before any folder is created), a first batch through
        # the model (nothing written if it fails), folders, then the state restored
        if resume == "auto":
            resume = str(ckpt_dir / "last.pt") if (ckpt_dir / "last.pt").is_file() else None
        state = self._new_state(data)
        signature = self._signature(state.model)
        payload = checkpoint.load(resume, signature) if resume else None
        self._preflight(state.model, data)
        ckpt_dir, export_dir = self._prepare_folders(ckpt_dir)
        if payload is not None and resume is not None:
            self._restore(state, payload, Path(resume), ckpt_dir)
        steps = TrainStep(
            self._distributed(state.model), state, self._loss_fn, self.config["train"], self.num_classes,
            self.device, self.amp, self.dist,
        )  # fmt: skip
        self.model, self.stop_reason, self.batches_per_epoch = state.model, None, data.batches_per_epoch
        run = self._run_info(data, state, run_name, resume, fold, num_folds, cv_id)
        export = export_error = None
        epochs_completed, started = state.start_epoch, time.perf_counter()

        with SigtermAsInterrupt(self.dist) as sigterm:
            try:
                hooks.call("fit_start", trainer=self, run=run)
                for epoch in range(state.start_epoch, self.config["train"]["epochs"]):
                    # one epoch: train, validate, metrics, epoch_end, checkpoints
                    run, is_best = self._epoch(epoch, steps, state, data, run)
                    epochs_completed = epoch + 1
                    if self.dist.is_main:
                        self._save_checkpoints(state, ckpt_dir, run, signature, run_name, fold, is_best, sigterm)
                    # stop together: a stop requested on rank 0 (hooks run there) ends every rank
                    if self._stop_everywhere():
                        state.status = "stopped"
                        break
                # the best checkpoint as ONNX, checked in onnxruntime against torch
                if export_dir is not None and self.dist.is_main and state.paths.get("best"):
                    export, export_error = self._export(state, export_dir, run_name, data.preview[0], signature)
                    if export is not None:
                        hooks.call("model_exported", trainer=self, run=run, export=export)
            except BaseException as exc:
                sigterm.ending = True
                self._failed(state, run, exc)
                raise
            finally:
                sigterm.ending = True
                result = state.result(
                    epochs_completed=epochs_completed,
                    export=export,
                    export_error=export_error,
                    stop_reason=self.stop_reason,
                    failures=hooks.failures(),
                    fold=fold,
                    duration_s=time.perf_counter() - started,
                )
                with self._lenient_if_failing(force=state.status in ("failed", "interrupted")):
                    hooks.call_bounded("fit_end", hooks.fit_end_timeout, trainer=self, run=run, result=result)
        return replace(result, plugin_failures=hooks.failures())  # with failures in fit_end itself

    def _epoch(
        self, epoch: int, steps: TrainStep, state: FitState, data: FitData, run: RunInfo
    ) -> tuple[RunInfo, bool]:
        """Train, validate, gather the metrics, ``epoch_end``; returns the run (with fingerprints
        filled in after a first epoch that computed them) and whether the epoch is the best."""
        hooks, started = self.hooks, time.perf_counter()
        self.epoch = epoch
        hooks.call("epoch_start", trainer=self, run=run, epoch=epoch)
        lr = state.optimizer.param_groups[0]["lr"]
        train_loss = self._train_epoch(steps, data, epoch, run)
        validation = self._validate(state.eval_model, data, epoch, run)
        run = self._with_loaded_fingerprints(run, data)
        hooks.call("validation_end", trainer=self, run=run, result=validation)
        metrics = {
            "train_loss": train_loss,
            "val_loss": validation.val_loss,
            "val_dice": validation.val_dice,
            "val_iou": validation.val_iou,
            "lr": lr,
            **self._per_class(validation),
        }
        metrics.update(self._plugin_metrics(run, validation, metrics))
        self._step_epoch_schedule(state, metrics)
        is_best = state.record_epoch(epoch, metrics)
        hooks.call(
            "epoch_end",
            trainer=self,
            run=run,
            epoch=EpochResult(
                epoch=epoch,
                metrics=freeze(metrics),
                monitor=state.monitor,
                is_best=is_best,
                best_value=state.best_value,
                best_epoch=state.best_epoch,
                duration_s=time.perf_counter() - started,
            ),
        )
        return run, is_best

    def _train_epoch(self, steps: TrainStep, data: FitData, epoch: int, run: RunInfo) -> float:
        # every epoch starts from RNG seeded by (seed, epoch): a resumed fit draws the same
        # shuffles, dropout and augmentations as an uninterrupted one, whatever the loader
        _seed_everything(stream_seed(self.config["train"]["seed"], epoch, "train_rng"))
        steps.model.train()
        steps.start_epoch(data.batches_per_epoch)
        step_hooks = self.hooks.has_implementations("train_batch_end")
        for batch_index, batch in enumerate(data.train_batches(epoch)):
            images, masks, labelled = self._loop_form(batch)
            loss = steps.batch(images, masks, labelled, epoch, batch_index)
            steps.state.global_step += 1
            if step_hooks and loss is not None:
                step = StepResult(
                    epoch=epoch,
                    batch_index=batch_index,
                    global_step=steps.state.global_step,
                    loss=loss,
                    lr=steps.state.optimizer.param_groups[0]["lr"],
                    batch_size=len(images),
                )
                self.hooks.call("train_batch_end", trainer=self, run=run, step=step)
        return steps.finish_epoch()

    @torch.no_grad()
    def _validate(self, model: torch.nn.Module, data: FitData, epoch: int, run: RunInfo) -> ValidationResult:
        """Metrics over the whole validation data (every rank's share), the validation loss with
        the fit's loss, and preview samples when a plugin reads them."""
        model.eval()
        where = self._validation_device()
        counts = ConfusionCounts(self.num_classes, where)
        loss_sum = torch.zeros((), dtype=torch.float64, device=where)
        seen = 0
        batches = ValidationBatches(self.hooks, self.dist, self, run)
        for batch_index, batch in enumerate(data.val_batches()):
            images, masks, labelled = self._loop_form(batch, where)
            logits = self._infer(model, images)
            if batch_index == 0:
                check_logits(logits, masks, self.num_classes)
            if labelled:
                loss_sum += self._loss_fn(logits.float(), masks).double() * len(images)
                seen += len(images)
            predictions = logits.argmax(1)
            counts.update(predictions, masks)
            batches.add(ValidationBatch(epoch, batch_index, images, masks, logits, predictions))
        batches.finish()
        counts.counts = self.dist.all_reduce_sum(counts.counts.to(self.device))
        totals = self.dist.all_reduce_sum(
            torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=where)]).to(self.device)
        )
        dice, iou = counts.mean_foreground()
        per_class_dice, per_class_iou = (tuple(float(v) for v in t.cpu()) for t in counts.per_class())
        wanted = self.hooks.has_implementations("validation_end") or self.hooks.has_implementations(
            "validation_metrics"
        )
        return ValidationResult(
            epoch=epoch,
            val_loss=float(totals[0] / totals[1]) if float(totals[1]) else math.nan,
            val_dice=dice,
            val_iou=iou,
            per_class_dice=per_class_dice,
            num_samples=int(totals[1]),
            samples=self._preview_samples(model, data) if self.dist.is_main and wanted else (),
            per_class_iou=per_class_iou,
        )

    def _infer(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Logits of a whole batch: in one pass, or window by window when infer.roi_size is set."""
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            if not self.infer["roi_size"]:
                return logits_of(model(images))
            return sliding_window(
                model,
                images,
                self.infer["roi_size"],
                overlap=self.infer["overlap"],
                mode=self.infer["mode"],
                batch_size=self.infer["batch_size"],
                device=self.device,
                output_device=images.device,
            )

    def _validation_device(self) -> torch.device:
        """Where validation keeps whole images and their logits: the CPU when windows go to the
        model one batch at a time and ``infer.output_device = "cpu"``, else the model's device."""
        if self.infer["roi_size"] and self.infer["output_device"] == "cpu":
            return torch.device("cpu")
        return self.device

    def _step_epoch_schedule(self, state: FitState, metrics: Mapping[str, float]) -> None:
        if self.config["train"]["scheduler_interval"] != "epoch":
            return
        if isinstance(state.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            state.scheduler.step(metrics.get(state.monitor, math.nan))
        else:
            state.scheduler.step()

    def _restore(self, state: FitState, payload: dict, source: Path, ckpt_dir: Path) -> None:
        """A resumed fit: weights, optimizer, schedule, scaler, average, RNG and plugin states."""
        state.restore(payload)
        state.paths["last"] = str(ckpt_dir / "last.pt")
        best = _best_checkpoint_for(source, ckpt_dir, state.best_epoch) if self.dist.is_main else None
        if best is not None:
            state.paths["best"] = str(best)
        for name, plugin_state in payload.get("plugins", {}).items():
            self.hooks.call_one(name, "load_state_dict", state=plugin_state)

    def _failed(self, state: FitState, run: RunInfo, exc: BaseException) -> None:
        """An exception ends the fit: its status, then ``fit_exception`` (plugins' errors reported only)."""
        interrupt = interrupt_behind(exc)
        state.status = "interrupted" if interrupt is not None and not isinstance(interrupt, PeerLost) else "failed"
        state.error = f"{type(exc).__name__}: {exc}"
        with self._lenient_if_failing(force=True):
            self.hooks.call("fit_exception", trainer=self, run=run, error=exc)

    # -- phase helpers --------------------------------------------------------------------------

    @torch.no_grad()
    def _preflight(self, model: torch.nn.Module, data: FitData) -> None:
        """The first validation batch through the model before anything is written or any hook
        fires: data or a model that does not fit fails here, with nothing left on disk."""
        batch = next(iter(data.val_batches()), None)
        if batch is None:
            if self.dist.enabled:
                return  # this rank's share of a tiny validation set is empty; another rank checks
            raise DataError("the validation data yields no batch: give it at least one sample")
        images, masks, _ = self._loop_form(batch, self._validation_device())
        model.eval()
        check_logits(self._infer(model, images), masks, self.num_classes)

    def _loop_form(self, batch: Any, where: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """A batch as (images, masks) on ``where`` (the device by default), class ids checked on the
        CPU before the copy, and whether any pixel is labelled (not ignored)."""
        images, masks = as_pair(batch, self.dims, batched=True, ignore_index=self.ignore_index)
        check_class_ids(masks, self.num_classes, self.ignore_index)
        labelled = bool(masks.max() >= 0)
        where = where or self.device
        return images.to(where, non_blocking=True), masks.to(where, non_blocking=True), labelled

    def _preview_samples(self, model: torch.nn.Module, data: FitData) -> tuple[ValidationSample, ...]:
        images, masks = data.preview
        predictions = self._infer(model, images.to(self._validation_device())).argmax(1).cpu()
        return tuple(ValidationSample(i.numpy(), m.numpy(), p.numpy()) for i, m, p in zip(images, masks, predictions))

    def _per_class(self, validation: ValidationResult) -> dict[str, float]:
        """val_dice_<class> and val_iou_<class> for every class seen so far (NaN ones left out)."""
        out = {}
        for name, dice, iou in zip(self.class_names, validation.per_class_dice, validation.per_class_iou):
            if not math.isnan(dice):
                out[f"val_dice_{name}"], out[f"val_iou_{name}"] = dice, iou
        return out

    def _plugin_metrics(
        self, run: RunInfo, validation: ValidationResult, taken: Mapping[str, float]
    ) -> dict[str, float]:
        """The plugins' own metrics, computed on rank 0 and sent to every rank, so all ranks agree
        on the monitored value and the best epoch. A plugin that fails is reported; if the monitor
        was its metric, this epoch cannot be the best one (the fit goes on)."""
        merged: dict[str, float] = {}
        failed_before = _failure_count(self.hooks.failures(), "validation_metrics")
        if self.dist.is_main:
            for plugin, values in self.hooks.collect(
                "validation_metrics", trainer=self, run=run, result=validation
            ).items():
                try:
                    merged.update(_checked_metrics(values, taken, merged))
                except (TypeError, ValueError) as exc:
                    self.hooks.report_failure(plugin, "validation_metrics", exc)
        failed = _failure_count(self.hooks.failures(), "validation_metrics") > failed_before
        merged, failed = self.dist.broadcast_from_main((merged, failed))
        monitor = self.config["checkpoint"]["monitor"]
        if monitor not in taken and monitor not in merged:
            if not failed:
                self._check_monitor([*taken, *merged], final=True)
            log.warning(
                "epoch %d has no %s (checkpoint.monitor): the plugin computing it failed; this epoch cannot be "
                "the best, the fit goes on",
                validation.epoch + 1,
                monitor,
            )
        return merged

    def _builtin_metric_names(self) -> list[str]:
        per_class = [f"val_{m}_{name}" for name in self.class_names for m in ("dice", "iou")]
        return [*METRIC_NAMES, "lr", *per_class]

    def _check_monitor(self, names: Iterable[str], final: bool) -> None:
        """``checkpoint.monitor`` names a metric: checked at start, or after the first epoch when
        plugins contribute metrics (their names are known only then)."""
        monitor, names = self.config["checkpoint"]["monitor"], list(names)
        if final and monitor not in names:
            raise ConfigError(
                f"checkpoint.monitor = {monitor!r} is not a metric of this fit: use one of {', '.join(names)}"
            )

    def _stop_everywhere(self) -> bool:
        if not self.dist.enabled:
            return bool(self.stop_reason)
        flag = torch.tensor([1.0 if self.stop_reason else 0.0], device=self.device)
        if self.dist.all_reduce_sum(flag).item() > 0 and not self.stop_reason:
            self.stop_reason = "stop requested on rank 0"
        return bool(self.stop_reason)

    def _save_checkpoints(
        self,
        state: FitState,
        ckpt_dir: Path,
        run: RunInfo,
        signature: dict,
        run_name: str,
        fold: int | None,
        is_best: bool,
        sigterm: SigtermAsInterrupt,
    ) -> None:
        cfg = self.config["checkpoint"]
        payload = state.payload(signature, run_name, fold, self.hooks.collect("state_dict"), self._inference_config)
        kinds = (["best"] if is_best else []) + ["last"] + (["epoch"] if cfg["keep"] else [])
        written = None
        for kind in kinds:
            # file names count epochs from 1, as the console and the trackers do
            path = ckpt_dir / (f"epoch-{state.epoch + 1:04d}.pt" if kind == "epoch" else f"{kind}.pt")
            # the same state under several names: serialise once, then link
            with sigterm.held():
                try:
                    size = (
                        checkpoint.save_atomic(payload, path)
                        if written is None
                        else checkpoint.link_atomic(written, path)
                    )
                except OSError as exc:  # a full disk, a quota, a folder removed under the fit
                    raise CheckpointError(
                        f"cannot write {path.name} in {ckpt_dir} ({exc.strerror or exc}): the checkpoints written "
                        f"before are intact; free space there or set checkpoint.dir, then resume with "
                        f"--resume auto"
                    ) from None
                written, state.paths[kind] = path, str(path)
            self.hooks.call(
                "checkpoint_saved",
                trainer=self,
                run=run,
                checkpoint=CheckpointInfo(
                    str(path), kind, state.epoch, state.monitor, state.last_metrics.get(state.monitor, math.nan), size
                ),
            )
        if cfg["keep"]:
            _prune_snapshots(ckpt_dir, cfg["keep"])

    def _export(
        self, state: FitState, export_dir: Path, run_name: str, sample: torch.Tensor, signature: dict
    ) -> tuple[ExportInfo | None, str | None]:
        from segtrack.export import export_onnx, predict_metadata, window_settings

        cfg = self.config["export"]
        best = state.paths.get("best")
        if best is None or not Path(best).is_file():  # the best epoch's checkpoint could not be found on resume
            best = state.paths["last"]
            log.warning("exporting %s: the checkpoint of the best epoch is not in the checkpoint folder", best)
        payload = checkpoint.load(best, signature)
        model = copy.deepcopy(state.model).cpu()
        model.load_state_dict(payload["model"])
        path = export_dir / f"{run_name}.onnx"
        try:
            metadata = predict_metadata(self.config, spatial_multiple(model))
            diff = export_onnx(model, sample, path, cfg["opset"], metadata, window_settings(self.infer))
        except Exception as exc:  # the trained checkpoints stay valid; say why the export is missing
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            log.warning(
                "ONNX export skipped: this model cannot be exported (%s: %s); the fit and its checkpoints "
                "are fine (%s); set export.enabled = false to silence this",
                type(exc).__name__,
                reason,
                best,
            )
            return None, f"{type(exc).__name__}: {reason}"
        ok = diff <= cfg["tolerance"]
        if not ok:
            log.warning(
                "ONNX export %s differs from torch by %.3g (> export.tolerance %.3g)", path, diff, cfg["tolerance"]
            )
        return ExportInfo(str(path), "onnx", cfg["opset"], payload["epoch"], tuple(sample.shape), diff, ok), None

    # -- setup helpers --------------------------------------------------------------------------

    def _new_state(self, data: FitData) -> FitState:
        """Seeded model (fresh, or the user's at its initial weights), optimizer, schedule, scaler,
        weight average: the recipe's factories are called anew for every fit."""
        cfg, train_cfg = self.config, self.config["train"]
        _seed_everything(train_cfg["seed"])
        if self._user_model is not None and self._initial_weights is not None:
            model = self._user_model
            model.load_state_dict(self._initial_weights)
        else:
            model = build_model(cfg["model"], self.num_classes, self.dims)
        model = model.to(self.device)
        optimizer = build_optimizer(model, train_cfg, self._optimizer_factory)
        steps_per_epoch = math.ceil(data.batches_per_epoch / train_cfg["accumulate"])
        return FitState(
            model=model,
            optimizer=optimizer,
            scheduler=build_scheduler(optimizer, train_cfg, steps_per_epoch, self._scheduler_factory),
            scaler=torch.amp.GradScaler("cuda", enabled=self.amp),
            monitor=cfg["checkpoint"]["monitor"],
            mode=cfg["checkpoint"]["mode"],
            ema=WeightAverage(model, train_cfg["ema"]) if train_cfg["ema"] else None,
        )

    def _signature(self, model: torch.nn.Module) -> dict:
        if self._user_model is not None:
            return user_model_signature(model, self.num_classes)
        return model_signature(self.config["model"], self.num_classes, self.dims)

    def _prepare_folders(self, ckpt_dir: Path) -> tuple[Path, Path | None]:
        ckpt_dir = checkpoint.ensure_writable_dir(ckpt_dir, "checkpoint.dir")
        if self.dist.is_main:
            for stale in checkpoint.remove_stale_temp_files(ckpt_dir):
                log.info("removed %s, left by an interrupted checkpoint write", stale)
        export = self.config["export"]
        export_dir = checkpoint.ensure_writable_dir(export["dir"], "export.dir") if export["enabled"] else None
        return ckpt_dir, export_dir

    def _distributed(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.dist.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _run_info(
        self,
        data: FitData,
        state: FitState,
        run_name: str,
        resume: str | None,
        fold: int | None,
        num_folds: int | None,
        cv_id: str | None,
    ) -> RunInfo:
        kind = type(state.model)
        model_name = (
            self.config["model"]["name"] if self._user_model is None else f"{kind.__module__}.{kind.__qualname__}"
        )
        return RunInfo(
            run_name=run_name,
            config=freeze(self._config_as_run()),
            device=str(self.device),
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            local_rank=self.dist.local_rank,
            fold=fold,
            num_folds=num_folds,
            cv_id=cv_id,
            train_sha256=data.train_sha256,
            val_sha256=data.val_sha256,
            num_train=data.num_train,
            num_val=data.num_val,
            num_parameters=sum(p.numel() for p in state.model.parameters()),
            start_epoch=state.start_epoch,
            resumed_from=resume,
            segtrack_version=__version__,
            plugins=tuple((r.name, r.version or "") for r in self.hooks.plugin_info.values()),
            batches_per_epoch=data.batches_per_epoch,
            spatial_dims=self.dims,
            num_classes=self.num_classes,
            class_names=self.class_names,
            model_name=model_name,
            data_source=self.data_source,
            fingerprint_kind=data.fingerprint_kind,
        )

    def _config_as_run(self) -> dict[str, Any]:
        """The settings as trackers record them: a loss, optimizer or scheduler passed in code
        replaces ``train.loss``/``train.optimizer``/``train.scheduler`` by its description."""
        if not self._recipe:
            return self.config
        config = copy.deepcopy(self.config)
        for key, text in self._recipe.items():
            config["train"][key] = f"python:{text}"
        return config

    def _with_loaded_fingerprints(self, run: RunInfo, data: FitData) -> RunInfo:
        """After the first epoch of data fingerprinted as it loads, the run with its digests."""
        if run.train_sha256 or data.fingerprint_kind != "loaded":
            return run
        train_sha256, val_sha256 = data.loaded_fingerprints()
        return replace(run, train_sha256=train_sha256, val_sha256=val_sha256)

    @contextlib.contextmanager
    def _lenient_if_failing(self, force: bool = False) -> Iterator[None]:
        """While an exception is already propagating, plugin errors are reported, never raised."""
        failing = force or sys.exc_info()[1] is not None
        saved = self.hooks.strict
        if failing:
            self.hooks.strict = False
        try:
            yield
        finally:
            self.hooks.strict = saved


def _best_checkpoint_for(source: Path, ckpt_dir: Path, best_epoch: int) -> Path | None:
    """The best epoch's checkpoint for a fit resumed from ``source``: ``<ckpt_dir>/best.pt`` when
    it holds that epoch; else the source itself or its sibling ``best.pt``, linked into
    ``ckpt_dir`` so the fit's folder is complete; None when no file holds that epoch."""
    if best_epoch < 0:
        return None
    target = ckpt_dir / "best.pt"
    for candidate in (target, source, source.with_name("best.pt")):
        if candidate.is_file() and checkpoint.epoch_of(candidate) == best_epoch:
            if candidate.resolve() != target.resolve():
                checkpoint.link_atomic(candidate, target)
            return target
    return None


def _data_source(data_cfg: Mapping[str, Any], given: Any) -> str:
    """Where the data comes from, in one line (``RunInfo.data_source``)."""
    if given is not None:
        kind = type(given.dataset if isinstance(given, torch.utils.data.DataLoader) else given)
        return f"python:{kind.__module__}.{kind.__qualname__}"
    if data_cfg.get("factory"):
        return f"factory:{data_cfg['factory']}"
    if data_cfg["source"] == "folder":
        return f"folder:{Path(data_cfg['path']).resolve()}"
    if data_cfg["source"] == "synthetic":
        return "synthetic"
    return f"dataset:{data_cfg['source']}"


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _resolve_device(name: str, ctx: DistContext) -> torch.device:
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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _prune_snapshots(folder: Path, keep: int) -> None:
    for old in sorted(folder.glob("epoch-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)


def _summary(results: list[FitResult]) -> dict[str, dict[str, float]]:
    """Mean, std, min and max over the folds of every metric their best epochs share (the
    monitor, per-class and plugin metrics included; the learning rate left out)."""
    summary = {}
    scored = [r.best_metrics for r in results if r.best_metrics]
    shared = [name for name in scored[0] if name != "lr" and all(name in m for m in scored)] if scored else []
    for name in shared:
        values = np.array([m[name] for m in scored], dtype=float)
        if values.size:
            summary[name] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                "min": float(values.min()),
                "max": float(values.max()),
            }
    return summary


def _checked_metrics(values: Any, taken: Mapping[str, float], merged: Mapping[str, float]) -> dict[str, float]:
    """One plugin's ``validation_metrics`` return value, checked: a dict of new names to numbers."""
    if not isinstance(values, Mapping):
        raise TypeError(f"validation_metrics returned {type(values).__name__}, not a dict of floats")
    out = {}
    for name, value in values.items():
        if not isinstance(name, str) or name in taken or name in merged:
            raise ValueError(f"metric name {name!r} is already taken or not a string: rename it")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(f"metric {name!r} is {type(value).__name__}, not a number")
        out[name] = float(value)
    return out


def _failure_count(failures: Iterable[Any], hook: str) -> int:
    return sum(f.count for f in failures if f.hook == hook)


def _check_window_fits(roi_size: int | list[int], multiple: int) -> None:
    """Every side of ``infer.roi_size`` is a multiple of what the model's sides must divide by."""
    sides = roi_size if isinstance(roi_size, list) else [roi_size]
    bad = [side for side in sides if side and side % multiple]
    if bad:
        fixed = [-(-side // multiple) * multiple if side else 0 for side in sides]
        raise ConfigError(
            f"infer.roi_size = {roi_size!r} has sides the model cannot take (they must divide by {multiple}): "
            f"use {fixed if isinstance(roi_size, list) else fixed[0]}"
        )
