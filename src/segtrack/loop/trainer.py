"""SegmentationTrainer: a linear fit loop, for the built-in UNet or any user model and dataset,
that emits the lifecycle hooks of segtrack.plugins.hookspecs. The phases live beside it: one
training batch (``train_step``), validation (``validation``), an epoch's metrics
(``epoch_metrics``), the fit's state (``state``); checkpoint files (``runtime.checkpoint``) and the
ONNX export (``inference.export``) below."""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtrack.config.settings import class_names, ignore_index, inference_config
from segtrack.data.batches import to_loop_form
from segtrack.data.configured import configured_data, data_source
from segtrack.data.plan import DataPlan, FitData, explained_loader_error, stream_seed
from segtrack.data.synthetic import ArrayDataset
from segtrack.errors import CheckpointError, ConfigError
from segtrack.inference.export import export_checkpoint
from segtrack.inference.windowed import check_window_fits
from segtrack.loop import epoch_metrics
from segtrack.loop.ema import WeightAverage
from segtrack.loop.losses import Loss, builtin_loss
from segtrack.loop.recipe import OptimizerFactory, SchedulerFactory, build_optimizer, build_scheduler
from segtrack.loop.run_info import Brought, cross_validated, recorded_config, with_loaded_fingerprints
from segtrack.loop.state import FitState
from segtrack.loop.train_step import TrainStep
from segtrack.loop.validation import Inferer, Validation
from segtrack.models.registry import build_model, spatial_multiple
from segtrack.models.unet import model_signature, user_model_signature
from segtrack.plugins.manager import PluginManager
from segtrack.plugins.records import CrossValidationInfo, CrossValidationResult, FitResult, RunInfo, freeze, thaw
from segtrack.runtime import checkpoint
from segtrack.runtime.device import amp_enabled, resolve_device, seed_everything
from segtrack.runtime.distributed import DistContext, context_from_env
from segtrack.session.best import BestEpoch
from segtrack.session.fit_session import FitSession, lenient
from segtrack.session.plugin_host import open_plugins
from segtrack.session.run_record import run_record

log = logging.getLogger("segtrack.trainer")
_RECIPE_HELP = {
    "loss": "(logits, target) -> scalar tensor",
    "optimizer": "a factory params -> torch.optim.Optimizer",
    "scheduler": "a factory optimizer -> torch.optim.lr_scheduler.LRScheduler",
}


class SegmentationTrainer:
    """Trains a segmentation model and calls every plugin's hooks at each phase boundary.

    :param settings: ``Settings`` already resolved (the CLI's), a Dynaconf object from
        ``segtrack.load_settings``, or a plain nested dict of what it changes (laid over the built-in
        defaults only); ``None`` reads the layers (defaults, ``configs/settings.toml``,
        ``SEGTRACK_*``). Anything but ``Settings`` is checked here once, with the plugins' schemas
        (``ConfigError`` lists every problem).
    :param plugins: plugin objects (or classes) to register besides the installed ones.
    :param model: any ``torch.nn.Module`` mapping a float batch ``(N, C, H, W)`` or ``(N, C, D, H, W)``
        to logits ``(N, data.num_classes, ...)``, or to a dict holding them under ``"out"``, or a
        tuple starting with them. ``None`` builds the configured model (``model.*``). Every fit
        (each cross-validation fold) starts from the weights it has when passed in.
    :param train_data: a map-style ``Dataset`` or a ``DataLoader``; samples are ``(image, mask)``
        or dicts with ``"image"`` and ``"mask"``/``"label"``, or lists of those (MONAI's crops).
        ``None`` uses the configured data.
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
    :param inferer: a callable ``(images, model) -> logits`` that validation uses instead of
        ``infer.*``, e.g. MONAI's ``SlidingWindowInferer(roi_size=(96, 96, 96), sw_batch_size=4,
        mode="gaussian")``; images and logits are whole batches. The ONNX
        check and ``segtrack predict`` keep using ``infer.*``.
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
        inferer: Inferer | None = None,
    ):
        _check_arguments(model, train_data, val_data, loss, optimizer, scheduler)
        if inferer is not None and not callable(inferer):
            raise ConfigError(f"inferer is a {type(inferer).__name__}: pass a callable (images, model) -> logits")
        self.dist: DistContext = context_from_env()
        # plugins and settings: opened once for every fit of this trainer (the CLI hands settings resolved)
        self.hooks, self.settings = open_plugins(settings, plugins, plugin_manager, self.dist.rank)
        self.config: dict[str, Any] = thaw(self.settings)
        self._inferer_name = _inferer_name(inferer, self.config["infer"])
        # device, classes, the recipe
        data_cfg = self.config["data"]
        self.device = resolve_device(self.config["train"]["device"], self.dist)
        self.amp = amp_enabled(self.config["train"]["amp"], self.device)
        self.num_classes, self.dims = data_cfg["num_classes"], data_cfg["dims"]
        self.ignore_index, self.class_names = ignore_index(data_cfg), class_names(data_cfg)
        # plugins may name the monitor later (rank 0's plugins decide, where plugins differ per rank)
        if not self.dist.broadcast_from_main(self.hooks.has_implementations("validation_metrics")):
            epoch_metrics.check_monitor(
                self.config["checkpoint"]["monitor"], epoch_metrics.builtin_names(self.class_names)
            )
        self._loss_fn: Loss = loss if loss is not None else builtin_loss(self.config["train"])
        self._optimizer_factory, self._scheduler_factory = optimizer, scheduler
        # what was passed in code, described in the records instead of the settings it replaces
        self._brought = Brought(model, train_data, val_data, loss, optimizer, scheduler)
        # model and data: the configured model is built once here, so a wrong name fails before any work
        self._user_model = model
        self._initial_weights = _cpu_copy(model.state_dict()) if model is not None else None
        self.data_source = data_source(data_cfg, train_data)
        self.data = self._data_plan(model, train_data, val_data)
        self._validation = Validation(
            self.config, self._loss_fn, self.hooks, self.dist, self.device, self.amp, self.ignore_index, inferer
        )
        self._inference_config = inference_config(self.config)
        self.model: torch.nn.Module | None = None
        self.epoch = 0
        self.epochs_trained = 0  # trained and validated by this trainer, over every fit and fold
        self.batches_per_epoch = 0
        self._session: FitSession | None = None  # the fit running now (or the last one)
        self._stop_folds = False
        # set by run_study: the trial these fits belong to, and whether a fit's best value earns an export
        self._trial: tuple[str, int] | None = None
        self._export_wanted: Callable[[float], bool] | None = None

    # -- public API for plugins ----------------------------------------------------------------

    def request_stop(self, reason: str, all_folds: bool = False) -> None:
        """Ask the fit to end after the current epoch (and its checkpoints); status ``stopped``.
        Under torchrun every rank stops after that epoch. ``all_folds``: in ``cv``, the folds not
        yet run are skipped too (a pruned trial)."""
        if self._session is not None:
            self._session.request_stop(reason)
        self._stop_folds = self._stop_folds or all_folds

    @property
    def stop_reason(self) -> str | None:
        """Why the fit running now (or the last one) was asked to stop, or None."""
        return self._session.stop_reason if self._session is not None else None

    # -- entry points ---------------------------------------------------------------------------

    def fit(self, resume: str | None = None) -> FitResult:
        """One fit on the train/validation data. ``resume``: a checkpoint path, or ``"auto"``
        (``<checkpoint.dir>/last.pt`` when it exists, else a fresh start)."""
        data = self.data.for_split(self.config["data"]["val_fraction"])
        ckpt_dir = Path(self.config["checkpoint"]["dir"])
        with _loader_deaths_explained():
            return self._fit(data, ckpt_dir, self.config["run"]["name"], resume)

    def cv(self, folds: int | None = None) -> CrossValidationResult:
        """k-fold cross-validation over ``train_data``: one fit per fold, then ``cross_validation_end``."""
        folds = self.config["data"]["folds"] if folds is None else folds
        self._check_folds(folds)
        name = self.config["run"]["name"]
        cv_id = uuid.uuid4().hex[:12]
        study_id, trial = self._trial or (None, None)
        info = CrossValidationInfo(
            cv_id=cv_id,
            num_folds=folds,
            config=freeze(cross_validated(recorded_config(self.config, self._brought), folds)),
            run_name=name,
            study_id=study_id,
            trial=trial,
        )
        self._stop_folds = False
        self.hooks.call("cross_validation_start", trainer=self, info=info)
        results: list[FitResult] = []
        try:
            for fold in range(folds):
                if self._stop_folds:
                    log.info("cross-validation ends after fold %d of %d: %s", fold, folds, self.stop_reason)
                    break
                data = self.data.for_fold(fold, folds)
                label = f"{name}-fold{fold + 1}"  # what people read counts folds from 1, as epochs
                ckpt_dir = Path(self.config["checkpoint"]["dir"]) / label
                with _loader_deaths_explained():
                    results.append(self._fit(data, ckpt_dir, label, None, fold=fold, num_folds=folds, cv_id=cv_id))
        finally:
            outcome = CrossValidationResult(
                cv_id=cv_id, num_folds=folds, folds=tuple(results), summary=freeze(_summary(results))
            )
            with lenient(self.hooks):
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
        # setup: the checkpoint to resume (read before any folder is created), a first batch through
        # the model (nothing written if it fails), folders, then the state restored
        resume = self._agreed_resume(resume, ckpt_dir)
        state = self._new_state(data)
        signature = self._signature(state.model)
        payload = checkpoint.load(resume, signature) if resume else None
        if payload is not None:
            self._check_epochs_left(int(payload.get("epoch", -1)) + 1, str(resume))
        self._validation.preflight(state.model, data)
        self._say_what_is_replaced(ckpt_dir, signature, resume)
        ckpt_dir, export_dir = self._prepare_folders(ckpt_dir)
        paths = self._restore(state, payload, Path(resume), ckpt_dir) if payload is not None and resume else {}
        steps = TrainStep(
            self._distributed(state.model), state, self._loss_fn, self.config["train"], self.num_classes,
            self.device, self.amp, self.dist,
        )  # fmt: skip
        if state.ema is not None and payload is None:  # DDP gave every rank rank 0's weights: average those
            state.ema.load_state_dict(state.model.state_dict())
        self.model, self.batches_per_epoch = state.model, data.batches_per_epoch
        # the session emits the hooks and owns the end-of-fit rules, as for any other loop
        session = self._session = FitSession._attached(
            hooks=self.hooks,
            settings=self.settings,
            run=self._run_info(data, state, run_name, resume, fold, num_folds, cv_id),
            best=state.best,
            loop=self,
            dist=self.dist,
            resume_state={"plugins": payload.get("plugins", {})} if payload is not None else None,
            model=state.model,
            global_step=state.global_step,
        )
        session.paths.update(paths)
        ckpts = checkpoint.CheckpointSets(ckpt_dir, self.config["checkpoint"]["keep"])

        with session, _loader_deaths_explained():
            try:
                for epoch in range(state.start_epoch, self.config["train"]["epochs"]):
                    # one epoch: train, validate, metrics, epoch_end; checkpoints on rank 0
                    is_best = self._epoch(epoch, steps, state, data, session)
                    if self.dist.is_main:
                        self._save_checkpoints(state, ckpts, session, signature, run_name, fold, is_best)
                    # stop together: a stop requested on rank 0 (hooks run there) ends every rank
                    if self._stop_everywhere(session):
                        break
                ckpts.wait()  # the last checkpoints in place (a refused write fails the fit here)
                self.dist.barrier()  # ranks leave the loop together: one leaving early can abort its peers in gloo
                # the best checkpoint as ONNX (rank 0 alone, after the last collective), checked in onnxruntime
                if (
                    export_dir is not None
                    and self.dist.is_main
                    and session.paths.get("best")
                    and self._earns_export(state)
                ):
                    self._export(state, signature, export_dir, run_name, data, session)
            finally:
                session.ending()  # a SIGTERM now waits for fit_end instead of replacing this fit's outcome
                self._checkpoints_landed(ckpts)  # before fit_end, however the fit ends
        assert session.result is not None
        return session.result

    def _epoch(self, epoch: int, steps: TrainStep, state: FitState, data: FitData, session: FitSession) -> bool:
        """Train, validate, gather the metrics, ``epoch_end``; returns whether the epoch is the best.
        The run record gains its fingerprints after a first epoch that computed them."""
        started = time.perf_counter()
        self.epoch = epoch
        session.epoch_start(epoch)
        lr = state.optimizer.param_groups[0]["lr"]
        train_loss = self._train_epoch(steps, data, epoch, session)
        validation = self._validation.run(state.eval_model, data, epoch, session.run, self)
        session.validation_end(validation, run=with_loaded_fingerprints(session.run, data))
        metrics = {
            "train_loss": train_loss,
            "val_loss": validation.val_loss,
            "val_dice": validation.val_dice,
            "val_iou": validation.val_iou,
            "lr": lr,
            **epoch_metrics.per_class(self.class_names, validation),
        }
        metrics.update(
            epoch_metrics.plugin_metrics(
                self.hooks, self.dist, state.monitor, metrics, trainer=self, run=session.run, result=validation
            )
        )
        self._step_epoch_schedule(state, metrics)
        self.epochs_trained += 1
        return session.epoch_end(
            epoch, metrics, global_step=state.global_step, duration_s=time.perf_counter() - started
        )

    def _train_epoch(self, steps: TrainStep, data: FitData, epoch: int, session: FitSession) -> float:
        # every epoch starts from RNG seeded by (seed, epoch): a resumed fit draws the same
        # shuffles, dropout and augmentations as an uninterrupted one, whatever the loader
        seed_everything(stream_seed(self.config["train"]["seed"], epoch, "train_rng"))
        steps.model.train()
        steps.start_epoch(data.batches_per_epoch)
        step_hooks = self.hooks.has_implementations("train_batch_end")
        for batch_index, batch in enumerate(data.train_batches(epoch)):
            images, masks, labelled = to_loop_form(batch, self.dims, self.num_classes, self.ignore_index, self.device)
            loss = steps.batch(images, masks, labelled, epoch, batch_index)
            steps.state.global_step += 1
            if step_hooks and loss is not None:
                session.batch_end(
                    steps.state.global_step,
                    loss,
                    epoch=epoch,
                    batch_index=batch_index,
                    lr=steps.state.optimizer.param_groups[0]["lr"],
                    batch_size=len(images),
                )
        return steps.finish_epoch()

    # -- phase helpers --------------------------------------------------------------------------

    def _step_epoch_schedule(self, state: FitState, metrics: Mapping[str, float]) -> None:
        if self.config["train"]["scheduler_interval"] != "epoch":
            return
        if isinstance(state.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            state.scheduler.step(metrics.get(state.monitor, math.nan))
        else:
            state.scheduler.step()

    def _stop_everywhere(self, session: FitSession) -> bool:
        if not self.dist.enabled:
            return session.should_stop
        flag = torch.tensor([1.0 if session.should_stop else 0.0], device=self.device)
        if self.dist.all_reduce_sum(flag).item() > 0 and not session.should_stop:
            session.request_stop("stop requested on rank 0")
        return session.should_stop

    def _save_checkpoints(
        self,
        state: FitState,
        ckpts: checkpoint.CheckpointSets,
        session: FitSession,
        signature: dict,
        run_name: str,
        fold: int | None,
        is_best: bool,
    ) -> None:
        """Best when improved, last always, a per-epoch snapshot when ``checkpoint.keep``; then
        ``checkpoint_saved`` for each. The files land while the next epoch trains, unless a plugin
        implements ``checkpoint_saved`` (it may read them): then they are waited for here."""
        payload = state.payload(signature, run_name, fold, session.plugin_states(), self._inference_config)
        kinds = (["best"] if is_best else []) + ["last"] + (["epoch"] if ckpts.keep else [])
        for kind, path in ckpts.write(payload, state.epoch, kinds, session.sigterm_held):
            session.paths[kind] = str(path)
        if not self.hooks.has_implementations("checkpoint_saved"):
            return
        for kind, path, size in ckpts.wait():
            session.checkpoint_saved(path, kind=kind, epoch=state.epoch, size_bytes=size)

    def _checkpoints_landed(self, ckpts: checkpoint.CheckpointSets) -> None:
        """Before the fit ends, however it ends: the checkpoints being written are in place. A
        refused write while another error ends the fit is logged (that error propagates)."""
        try:
            ckpts.wait()
        except CheckpointError as exc:
            log.error("%s", exc)

    def _export(
        self, state: FitState, signature: dict, export_dir: Path, run_name: str, data: FitData, session: FitSession
    ) -> None:
        best = session.paths.get("best")
        if best is None or not Path(best).is_file():  # the best epoch's checkpoint could not be found on resume
            best = session.paths["last"]
            log.warning("exporting %s: the checkpoint of the best epoch is not in the checkpoint folder", best)
        path = export_dir / f"{run_name}.onnx"
        export, session.export_error = export_checkpoint(
            state.model, best, signature, path, data.preview[0], self.config
        )
        if export is not None:
            session.exported(export)

    def _check_epochs_left(self, trained: int, resume: str) -> None:
        """A checkpoint past ``train.epochs`` is refused (nothing is written); one at it trains
        nothing more, said once (the fit then ends as it would have: export, fit_end)."""
        epochs = self.config["train"]["epochs"]
        if trained > epochs:
            raise ConfigError(
                f"train.epochs = {epochs} but {resume} already holds {trained} trained epochs: nothing to train; "
                f"set train.epochs above {trained} to train on, or leave out --resume to start over"
            )
        if trained == epochs and self.dist.is_main:
            log.warning("nothing left to train: %s is at epoch %d of %d", resume, trained, epochs)

    def _agreed_resume(self, resume: str | None, ckpt_dir: Path) -> str | None:
        """The checkpoint every rank resumes from (``"auto"``: ``last.pt`` if present), or None.
        Under torchrun each rank looks in its own filesystem: where ranks see different files
        (node-local checkpoint folders, a copy missing on one node) every rank stops here, before
        training, with the same sentence; never a silent fresh start or ranks at different epochs."""
        if resume == "auto":
            resume = str(ckpt_dir / "last.pt") if (ckpt_dir / "last.pt").is_file() else None
        if not self.dist.enabled:
            return resume
        seen = self.dist.all_gather(checkpoint.identity(resume))
        if len(set(seen)) > 1:
            found = "; ".join(f"rank {rank}: {what}" for rank, what in enumerate(seen))
            raise CheckpointError(
                f"the ranks see different checkpoints to resume from ({found}): checkpoint.dir must be one folder "
                "every node shares (e.g. a network filesystem), or give every node the same --resume file"
            )
        return resume

    def _earns_export(self, state: FitState) -> bool:
        return self._export_wanted is None or self._export_wanted(state.best.value)

    def _restore(self, state: FitState, payload: dict, source: Path, ckpt_dir: Path) -> dict[str, str]:
        """A resumed fit: weights, optimizer, schedule, scaler, average, RNG, best and last epoch;
        returns where its checkpoints are (the plugins' states are restored by the session)."""
        state.restore(payload)
        paths = {"last": str(ckpt_dir / "last.pt")}
        best = checkpoint.best_for_resume(source, ckpt_dir, state.best.epoch) if self.dist.is_main else None
        if best is not None:
            paths["best"] = str(best)
        return paths

    # -- setup helpers --------------------------------------------------------------------------

    def _data_plan(self, model: torch.nn.Module | None, train_data: Any, val_data: Any) -> DataPlan:
        """The data of every fit: the user's, or the configured (checked here, before any work)."""
        multiple = spatial_multiple(
            model if model is not None else build_model(self.config["model"], self.num_classes, self.dims)
        )
        check_window_fits(self.config["infer"]["roi_size"], multiple)
        builtin, split = None, None
        if train_data is None:
            train_data, val_data, split = configured_data(self.config)
            if isinstance(train_data, ArrayDataset):
                builtin, train_data = train_data, None
        return DataPlan(
            self.config,
            self.dist,
            pin_memory=self.device.type == "cuda",
            train_data=train_data,
            val_data=val_data,
            builtin=builtin,
            predefined_split=split,
            spatial_multiple=multiple,
        )

    def _check_folds(self, folds: Any) -> None:
        """Checked before any hook, so no tracker opens a CV run for nothing."""
        if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
            raise ConfigError(f"--folds {folds!r} is invalid: cross-validation needs an integer >= 2")
        if self.data.val_dataset is not None or self.data.val_loader is not None:
            raise ConfigError("cv() splits train_data into folds, so val_data would be unused: pass only train_data")
        if folds > self.data.splittable_count:
            raise ConfigError(
                f"{folds} folds need at least {folds} samples, the dataset has "
                f"{self.data.splittable_count}: lower --folds"
            )

    def _new_state(self, data: FitData) -> FitState:
        """Seeded model (fresh, or the user's at its initial weights), optimizer, schedule, scaler,
        weight average: the recipe's factories are called anew for every fit."""
        cfg, train_cfg = self.config, self.config["train"]
        seed_everything(train_cfg["seed"])
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
            best=BestEpoch(cfg["checkpoint"]["monitor"], cfg["checkpoint"]["mode"]),
            ema=WeightAverage(model, train_cfg["ema"]) if train_cfg["ema"] else None,
        )

    def _fit_parts(self, state: FitState) -> Brought:
        """What this fit was given in code, the optimizer and scheduler as built for it."""
        brought = self._brought
        return replace(
            brought,
            optimizer=state.optimizer if brought.optimizer is not None else None,
            scheduler=state.scheduler if brought.scheduler is not None else None,
        )

    def _signature(self, model: torch.nn.Module) -> dict:
        if self._user_model is not None:
            return user_model_signature(model, self.num_classes)
        return model_signature(self.config["model"], self.num_classes, self.dims)

    def _prepare_folders(self, ckpt_dir: Path) -> tuple[Path, Path | None]:
        """Checkpoint and export folders, created and checked on rank 0 only (the one writer):
        other ranks, maybe on other nodes, create nothing."""
        export = self.config["export"]
        export_dir = Path(export["dir"]) if export["enabled"] else None
        refused = None
        if self.dist.is_main:
            try:
                checkpoint.ensure_writable_dir(ckpt_dir, "checkpoint.dir")
                for stale in checkpoint.remove_stale_temp_files(ckpt_dir):
                    log.info("removed %s, left by an interrupted checkpoint write", stale)
                if export_dir is not None:
                    checkpoint.ensure_writable_dir(export_dir, "export.dir")
            except CheckpointError as exc:
                refused = str(exc)
        refused = self.dist.broadcast_from_main(refused)  # every rank stops together
        if refused is not None:
            raise CheckpointError(refused)
        return ckpt_dir, export_dir

    def _say_what_is_replaced(self, ckpt_dir: Path, signature: dict, resume: str | None) -> None:
        """A fresh fit whose folder holds another model's checkpoints (the 2D fit's, now 3D: the
        same run.name) replaces them: said in one line, with how to keep both."""
        if resume or not self.dist.is_main:
            return
        ours = checkpoint.describe_signature(signature)
        for name in ("best.pt", "last.pt"):
            found = checkpoint.signature_of(ckpt_dir / name)
            theirs = checkpoint.describe_signature(found) if found is not None else ours
            if theirs != ours:
                log.warning(
                    "%s holds a fit of another model (%s); this fit (%s) replaces it and its export: set "
                    "run.name (or checkpoint.dir) to keep both",
                    ckpt_dir / name,
                    theirs,
                    ours,
                )
                return

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
        return run_record(
            hooks=self.hooks,
            dist=self.dist,
            config=cross_validated(recorded_config(self.config, self._fit_parts(state)), num_folds, data),
            run_name=run_name,
            device=str(self.device),
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
            batches_per_epoch=data.batches_per_epoch,
            spatial_dims=self.dims,
            num_classes=self.num_classes,
            class_names=self.class_names,
            model_name=model_name,
            data_source=self.data_source,
            fingerprint_kind=data.fingerprint_kind,
            study_id=self._trial[0] if self._trial else None,
            trial=self._trial[1] if self._trial else None,
            max_epochs=self.config["train"]["epochs"],
            inferer=self._inferer_name,
        )


@contextlib.contextmanager
def _loader_deaths_explained() -> Iterator[None]:
    """A data-loading worker's death leaves the fit as one sentence, wherever torch raised it."""
    try:
        yield
    except Exception as exc:
        explained = explained_loader_error(exc)
        if explained is None:
            raise
        raise explained from None


def _check_arguments(
    model: Any,
    train_data: Any,
    val_data: Any,
    loss: Any,
    optimizer: Any,
    scheduler: Any,
) -> None:
    """What the constructor is given, checked before anything is built."""
    if model is not None and not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"model is a {type(model).__name__}: pass a torch.nn.Module (or None for the configured model.name)"
        )
    for name, given in (("loss", loss), ("optimizer", optimizer), ("scheduler", scheduler)):
        if given is not None and not callable(given):
            raise ConfigError(f"{name} is a {type(given).__name__}: pass a callable ({_RECIPE_HELP[name]})")
    if val_data is not None and train_data is None:
        raise ConfigError(
            "val_data was given without train_data: pass train_data too (val_data alone cannot train a model)"
        )


def _inferer_name(inferer: Any, infer: Mapping[str, Any]) -> str:
    """What validation computes its logits with, as the run records it."""
    if inferer is not None:
        named = inferer if hasattr(inferer, "__qualname__") else type(inferer)  # a function, or an instance
        return f"{getattr(named, '__module__', '?')}.{named.__qualname__}"
    if not infer.get("roi_size"):
        return "whole image"
    return f"segtrack.sliding_window(roi_size={infer['roi_size']}, overlap={infer['overlap']}, mode={infer['mode']})"


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _summary(results: list[FitResult]) -> dict[str, dict[str, float]]:
    """Mean, std, min and max over the folds of every metric their best epochs share (the
    monitor, per-class and plugin metrics included; the learning rate left out)."""
    summary = {}
    scored = [r.best_metrics for r in results if r.best_metrics]
    shared = [name for name in scored[0] if name != "lr" and all(name in m for m in scored)] if scored else []
    for name in shared:
        values = np.array([m[name] for m in scored], dtype=float)
        summary[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return summary
