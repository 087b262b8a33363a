"""SegmentationTrainer: a linear fit loop that emits the lifecycle hooks of segtrack.hookspecs."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from segtrack import __version__, checkpoint
from segtrack.config import METRIC_NAMES, check_plugin_sections, load_settings, plain, resolved_dict, validate
from segtrack.data import ArrayDataset, fingerprint, fold_indices, load_arrays, split_indices
from segtrack.distributed import DistContext, context_from_env, shard
from segtrack.errors import ConfigError, PeerLost
from segtrack.metrics import ConfusionCounts, segmentation_loss
from segtrack.model import build_model, model_signature
from segtrack.plugins import PluginManager, get_plugin_manager, installed_entry_points
from segtrack.records import (
    CheckpointInfo,
    CrossValidationInfo,
    CrossValidationResult,
    EpochResult,
    ExportInfo,
    FitResult,
    RunInfo,
    StepResult,
    ValidationResult,
    ValidationSample,
    freeze,
)

log = logging.getLogger("segtrack.trainer")
HELD_SAMPLES = 4  # validation images shown to plugins and used for the ONNX parity check


class SegmentationTrainer:
    """Trains the built-in UNet and calls every plugin's hooks at each phase boundary.

    :param settings: a Dynaconf object from ``segtrack.load_settings`` or a plain nested dict of
        every section; ``None`` loads the defaults (and ``configs/settings.toml`` if present).
    :param plugins: plugin objects (or classes) to register besides the installed ones.
    :param plugin_manager: a prebuilt manager (from ``get_plugin_manager``); ``plugins`` must
        then be empty.
    """

    def __init__(self, settings: Any = None, plugins: Iterable[Any] = (), *, plugin_manager: PluginManager | None = None):
        if settings is None:
            settings = load_settings()
        self.settings = settings
        self.config = resolved_dict(settings) if not isinstance(settings, Mapping) else plain(settings)
        validate(self.config)
        self.dist: DistContext = context_from_env()
        if plugin_manager is not None and list(plugins):
            raise ConfigError("pass plugins either in `plugins` or inside `plugin_manager`, not both")
        self.plugins = plugin_manager or get_plugin_manager(self.config, plugins, rank=self.dist.rank)
        self.plugins.rank = self.dist.rank
        known = set(self.plugins.names()) | set(installed_entry_points()) | set(self.config["plugins"]["disabled"])
        check_plugin_sections(self.config, known)
        self.plugins.call_all_ranks("settings_loaded", settings=settings)

        self.device = _resolve_device(self.config["train"]["device"], self.dist)
        amp = self.config["train"]["amp"]
        self.amp = self.device.type == "cuda" if amp == "auto" else bool(amp)
        if self.amp and self.device.type != "cuda":
            raise ConfigError("train.amp = true needs a CUDA device: set train.amp = \"auto\" or false on CPU")
        self._images, self._masks = load_arrays(self.config["data"], self.config["model"], self.config["train"]["seed"])
        self.num_classes = self.config["data"]["num_classes"]
        self.model: torch.nn.Module | None = None
        self.epoch = 0
        self.batches_per_epoch = 0
        self.stop_reason: str | None = None

    # -- public API for plugins ----------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Ask the fit to end after the current epoch (and its checkpoints); status ``stopped``."""
        self.stop_reason = reason or "stop requested"

    # -- entry points ---------------------------------------------------------------------------

    def fit(self, resume: str | None = None) -> FitResult:
        """One fit on the train/validation split. ``resume``: a checkpoint path, or ``"auto"``
        (``<checkpoint.dir>/last.pt`` when it exists, else a fresh start)."""
        train_idx, val_idx = split_indices(len(self._masks), self.config["data"]["val_fraction"], self.config["train"]["seed"])
        ckpt_dir = Path(self.config["checkpoint"]["dir"])
        return self._fit(train_idx, val_idx, ckpt_dir, self.config["run"]["name"], resume)

    def cv(self, folds: int | None = None) -> CrossValidationResult:
        """k-fold cross-validation: one fit per fold, then ``cross_validation_end`` with all folds."""
        folds = folds or self.config["data"]["folds"]
        if not isinstance(folds, int) or folds < 2:
            raise ConfigError(f"--folds {folds!r} is invalid: cross-validation needs an integer >= 2")
        name = self.config["run"]["name"]
        cv_id = uuid.uuid4().hex[:12]
        self.plugins.call("cross_validation_start", trainer=self,
                          info=CrossValidationInfo(cv_id, folds, freeze(self.config), name))
        results: list[FitResult] = []
        try:
            for fold in range(folds):
                train_idx, val_idx = fold_indices(len(self._masks), folds, fold, self.config["train"]["seed"])
                ckpt_dir = Path(self.config["checkpoint"]["dir"]) / f"{name}-fold{fold}"
                results.append(self._fit(train_idx, val_idx, ckpt_dir, f"{name}-fold{fold}", None,
                                         fold=fold, num_folds=folds, cv_id=cv_id))
        finally:
            outcome = CrossValidationResult(cv_id, folds, tuple(results), freeze(_summary(results)))
            with self._lenient_if_failing():
                self.plugins.call("cross_validation_end", trainer=self, result=outcome)
        return outcome

    # -- the loop -------------------------------------------------------------------------------

    def _fit(self, train_idx, val_idx, ckpt_dir: Path, run_name: str, resume: str | None,
             fold: int | None = None, num_folds: int | None = None, cv_id: str | None = None) -> FitResult:
        cfg, train_cfg = self.config, self.config["train"]
        if resume == "auto":
            resume = str(ckpt_dir / "last.pt") if (ckpt_dir / "last.pt").is_file() else None
        signature = model_signature(cfg["model"], self.num_classes)
        payload = checkpoint.load(resume, signature) if resume else None  # before creating any folder
        ckpt_dir = checkpoint.ensure_writable_dir(ckpt_dir, "checkpoint.dir")
        if self.dist.is_main:
            for stale in checkpoint.remove_stale_temp_files(ckpt_dir):
                log.info("removed %s, left by an interrupted checkpoint write", stale)
        export_dir = checkpoint.ensure_writable_dir(cfg["export"]["dir"], "export.dir") if cfg["export"]["enabled"] else None

        # setup: seeded model, optimizer, schedule
        _seed_everything(train_cfg["seed"])
        model = build_model(cfg["model"], self.num_classes).to(self.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
        scheduler = _make_scheduler(optimizer, train_cfg["scheduler"], train_cfg["epochs"])
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.model, self.stop_reason = model, None
        best_value, best_epoch, global_step, start_epoch = _worst(cfg["checkpoint"]["mode"]), -1, 0, 0
        best_metrics: dict[str, float] = {}
        if payload is not None:
            # restore: weights, optimizer, schedule, counters, RNG, then each plugin's own state
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
            scaler.load_state_dict(payload["scaler"])
            start_epoch, global_step = payload["epoch"] + 1, payload["global_step"]
            best_value, best_epoch = payload["best_value"], payload["best_epoch"]
            best_metrics = dict(payload.get("best_metrics", {}))
            checkpoint.restore_rng(payload["rng"])
            for name, state in payload.get("plugins", {}).items():
                self.plugins.call_one(name, "load_state_dict", state=state)
        train_model = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

        train_set = ArrayDataset(self._images[train_idx], self._masks[train_idx])
        val_set = ArrayDataset(self._images[val_idx], self._masks[val_idx])
        held = val_set.images[:HELD_SAMPLES], val_set.masks[:HELD_SAMPLES]
        self.batches_per_epoch = math.ceil(len(shard(torch.arange(len(train_set)), self.dist)) / train_cfg["batch_size"])
        run = RunInfo(
            run_name=run_name, config=freeze(cfg), device=str(self.device), rank=self.dist.rank,
            world_size=self.dist.world_size, local_rank=self.dist.local_rank, fold=fold, num_folds=num_folds,
            cv_id=cv_id, train_sha256=fingerprint(self._images, self._masks, train_idx),
            val_sha256=fingerprint(self._images, self._masks, val_idx), num_train=len(train_idx),
            num_val=len(val_idx), num_parameters=sum(p.numel() for p in model.parameters()),
            start_epoch=start_epoch, resumed_from=resume, segtrack_version=__version__,
            plugins=tuple((r.name, r.version or "") for r in self.plugins.records.values()),
        )
        hooks = self.plugins
        monitor, mode = cfg["checkpoint"]["monitor"], cfg["checkpoint"]["mode"]
        status, error, export, export_error, last_metrics = "completed", None, None, None, {}
        epochs_completed, started = start_epoch, time.perf_counter()
        paths = {"best": ckpt_dir / "best.pt" if best_epoch >= 0 else None, "last": ckpt_dir / "last.pt" if resume else None}
        with _SigtermAsInterrupt(self.dist) as sigterm:
            try:
                hooks.call("fit_start", trainer=self, run=run)
                for epoch in range(start_epoch, train_cfg["epochs"]):
                    self.epoch = epoch
                    epoch_started = time.perf_counter()
                    hooks.call("epoch_start", trainer=self, run=run, epoch=epoch)
                    lr = optimizer.param_groups[0]["lr"]
                    train_loss, global_step = self._train_epoch(train_model, optimizer, scaler, train_set, epoch, global_step, run)
                    validation = self._validate(model, val_set, held, epoch)
                    hooks.call("validation_end", trainer=self, run=run, result=validation)
                    scheduler.step()
                    last_metrics = {"train_loss": train_loss, "val_loss": validation.val_loss,
                                    "val_dice": validation.val_dice, "val_iou": validation.val_iou, "lr": lr}
                    is_best = _improved(last_metrics[monitor], best_value, mode)
                    if is_best:
                        best_value, best_epoch, best_metrics = last_metrics[monitor], epoch, dict(last_metrics)
                    epochs_completed = epoch + 1
                    hooks.call("epoch_end", trainer=self, run=run, epoch=EpochResult(
                        epoch, freeze(last_metrics), monitor, is_best, best_value, best_epoch,
                        time.perf_counter() - epoch_started))
                    # checkpoints (rank 0): best when improved, last always, optional per-epoch snapshots
                    if self.dist.is_main:
                        state = {
                            "format": checkpoint.FORMAT, "version": checkpoint.VERSION, "model_signature": signature,
                            "epoch": epoch, "global_step": global_step, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "scaler": scaler.state_dict(), "best_value": best_value, "best_epoch": best_epoch,
                            "best_metrics": best_metrics, "metrics": last_metrics, "run_name": run_name, "fold": fold,
                            "rng": checkpoint.rng_state(), "plugins": hooks.collect("state_dict"),
                        }
                        kinds = (["best"] if is_best else []) + ["last"] + (["epoch"] if cfg["checkpoint"]["keep"] else [])
                        written = None
                        for kind in kinds:
                            path = ckpt_dir / (f"epoch-{epoch:04d}.pt" if kind == "epoch" else f"{kind}.pt")
                            # the same state under several names: serialise once, then link
                            with sigterm.held():
                                size = checkpoint.save_atomic(state, path) if written is None else checkpoint.link_atomic(written, path)
                                written, paths[kind] = path, path
                            hooks.call("checkpoint_saved", trainer=self, run=run, checkpoint=CheckpointInfo(
                                str(path), kind, epoch, monitor, last_metrics[monitor], size))
                        if cfg["checkpoint"]["keep"]:
                            _prune_snapshots(ckpt_dir, cfg["checkpoint"]["keep"])
                    self.dist.barrier()
                    if self.stop_reason:
                        status = "stopped"
                        break
                if export_dir is not None and self.dist.is_main and paths.get("best"):
                    export, export_error = self._export(paths["best"], export_dir, run_name, held[0], signature)
                    if export is not None:
                        hooks.call("model_exported", trainer=self, run=run, export=export)
            except BaseException as exc:
                sigterm.ending = True
                interrupt = _interrupt_behind(exc)
                status = "interrupted" if interrupt is not None and not isinstance(interrupt, PeerLost) else "failed"
                error = f"{type(exc).__name__}: {exc}"
                with self._lenient_if_failing(force=True):
                    hooks.call("fit_exception", trainer=self, run=run, error=exc)
                raise
            finally:
                sigterm.ending = True
                result = FitResult(
                    status=status, epochs_completed=epochs_completed, best_value=best_value, best_epoch=best_epoch,
                    monitor=monitor, final_metrics=freeze(last_metrics), best_metrics=freeze(best_metrics),
                    best_checkpoint=str(paths["best"]) if paths.get("best") else None,
                    last_checkpoint=str(paths["last"]) if paths.get("last") else None, export=export,
                    export_error=export_error, stop_reason=self.stop_reason, error=error,
                    plugin_failures=hooks.failures(), fold=fold, duration_s=time.perf_counter() - started,
                )
                with self._lenient_if_failing(force=status in ("failed", "interrupted")):
                    hooks.call_bounded("fit_end", hooks.fit_end_timeout, trainer=self, run=run, result=result)
        return _with_failures(result, hooks)

    def _train_epoch(self, model, optimizer, scaler, dataset, epoch: int, global_step: int, run: RunInfo):
        train_cfg = self.config["train"]
        seed = train_cfg["seed"] * 100_003 + epoch  # the order depends on seed and epoch only: resumable
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        order = shard(order, self.dist)
        batches = [order[i : i + train_cfg["batch_size"]] for i in range(0, len(order), train_cfg["batch_size"])]
        if train_cfg["num_workers"] == 0:
            # the data is in memory: index whole batches (a DataLoader would fetch and stack sample by sample)
            loader = ((dataset.images[b], dataset.masks[b]) for b in batches)
        else:
            loader = DataLoader(dataset, batch_sampler=[b.tolist() for b in batches],
                                num_workers=train_cfg["num_workers"], pin_memory=self.device.type == "cuda")
        flips = torch.Generator().manual_seed(seed + 1)
        model.train()
        device, amp, dice_weight = self.device, self.amp, train_cfg["dice_weight"]
        call, has_step_hooks = self.plugins.call, self.plugins.has_implementations("train_batch_end")
        total, count = torch.zeros((), device=device), 0
        for batch_index, (images, masks) in enumerate(loader):
            if train_cfg["augment"]:
                flip = torch.rand(len(images), generator=flips) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
                masks = torch.where(flip[:, None, None], masks.flip(-1), masks)
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                loss = segmentation_loss(model(images), masks, dice_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            detached = loss.detach()
            total += detached * len(images)
            count += len(images)
            if has_step_hooks:
                call("train_batch_end", trainer=self, run=run, step=StepResult(
                    epoch, batch_index, global_step, float(detached), optimizer.param_groups[0]["lr"], len(images)))
        sums = self.dist.all_reduce_sum(torch.stack([total.double(), torch.tensor(float(count), device=device).double()]))
        return float(sums[0] / sums[1]), global_step

    @torch.no_grad()
    def _validate(self, model, dataset, held, epoch: int) -> ValidationResult:
        model.eval()
        cfg = self.config["train"]
        counts = ConfusionCounts(self.num_classes, self.device)
        indices = torch.arange(len(dataset))[self.dist.rank :: self.dist.world_size]
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        held_predictions = {}  # the held samples' predictions, taken from the pass itself
        for start in range(0, len(indices), cfg["batch_size"]):
            batch = indices[start : start + cfg["batch_size"]]
            images = dataset.images[batch].to(self.device)
            masks = dataset.masks[batch].to(self.device)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                logits = model(images)
            loss_sum += segmentation_loss(logits.float(), masks, cfg["dice_weight"]).double() * len(batch)
            predictions = logits.argmax(1)
            counts.update(predictions, masks)
            for position, index in enumerate(batch.tolist()):
                if index < len(held[0]):
                    held_predictions[index] = predictions[position].cpu()
        self.dist.all_reduce_sum(counts.counts)
        totals = self.dist.all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(len(indices)), dtype=torch.float64, device=self.device)]))
        dice, iou = counts.mean_foreground()
        samples = ()
        if self.dist.is_main:
            missing = [i for i in range(len(held[0])) if i not in held_predictions]  # other ranks' share
            if missing:
                with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                    extra = model(held[0][missing].to(self.device)).argmax(1).cpu()
                held_predictions.update(zip(missing, extra))
            samples = tuple(ValidationSample(img.numpy(), msk.numpy(), held_predictions[i].numpy())
                            for i, (img, msk) in enumerate(zip(held[0], held[1])))
        per_class = tuple(float(v) for v in counts.per_class()[0].cpu())
        return ValidationResult(epoch, float(totals[0] / totals[1]), dice, iou, per_class, len(dataset), samples)

    def _export(self, best_path: Path, export_dir: Path, run_name: str, sample: torch.Tensor, signature: dict):
        from segtrack.export import export_onnx

        cfg = self.config["export"]
        payload = checkpoint.load(best_path, signature)
        model = build_model(self.config["model"], self.num_classes)
        model.load_state_dict(payload["model"])
        path = export_dir / f"{run_name}.onnx"
        try:
            diff = export_onnx(model, sample, path, cfg["opset"])
        except Exception as exc:  # the trained checkpoints stay valid; say why the export is missing
            log.error("ONNX export of %s failed: %s: %s; the checkpoints are intact, export later or set "
                      "export.enabled = false", best_path, type(exc).__name__, exc)
            return None, f"{type(exc).__name__}: {exc}"
        ok = diff <= cfg["tolerance"]
        if not ok:
            log.warning("ONNX export %s differs from torch by %.3g (> export.tolerance %.3g)", path, diff, cfg["tolerance"])
        return ExportInfo(str(path), "onnx", cfg["opset"], payload["epoch"], tuple(sample.shape), diff, ok), None

    @contextlib.contextmanager
    def _lenient_if_failing(self, force: bool = False):
        """While an exception is already propagating, plugin errors are reported, never raised."""
        failing = force or _exception_in_flight()
        saved = self.plugins.strict
        if failing:
            self.plugins.strict = False
        try:
            yield
        finally:
            self.plugins.strict = saved


def _exception_in_flight() -> bool:
    import sys

    return sys.exc_info()[1] is not None


def _with_failures(result: FitResult, hooks: PluginManager) -> FitResult:
    """Include failures that happened in fit_end itself."""
    from dataclasses import replace

    return replace(result, plugin_failures=hooks.failures())


def _resolve_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device = {name!r} but no CUDA device is available: use \"auto\" or \"cpu\"")
        if name == "cuda":
            return torch.device("cuda", ctx.local_rank)
        index = int(name.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(f"train.device = {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _make_scheduler(optimizer, kind: str, epochs: int):
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=_constant)


def _constant(epoch: int) -> float:
    return 1.0


def _worst(mode: str) -> float:
    return -math.inf if mode == "max" else math.inf


def _improved(value: float, best: float, mode: str) -> bool:
    if math.isnan(value):
        return False
    return value > best if mode == "max" else value < best


def _prune_snapshots(folder: Path, keep: int) -> None:
    for old in sorted(folder.glob("epoch-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)


def _summary(results: list[FitResult]) -> dict[str, dict[str, float]]:
    summary = {}
    for name in METRIC_NAMES:
        values = np.array([r.best_metrics[name] for r in results if name in r.best_metrics], dtype=float)
        if values.size:
            summary[name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                             "min": float(values.min()), "max": float(values.max())}
    return summary


def _interrupt_behind(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``exc`` is, or that was unwinding when cleanup code raised
    ``exc`` instead: a user's stop stays a stop even when a library fails on the way out."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


class _SigtermAsInterrupt:
    """SIGTERM ends the fit like Ctrl-C (status ``interrupted``, hooks fire, checkpoints intact).

    Under torchrun a SIGTERM also comes when another rank died; if a rank on this machine has
    ended when it arrives, the fit ends as ``failed`` (``PeerLost``), not as interrupted. A
    SIGTERM during a checkpoint write is raised once the write is done (raised inside torch.save,
    it broke the zip writer, whose error then replaced the interrupt). Once the fit is ending
    (``fit_exception``/``fit_end`` running, e.g. a tracking plugin flushing its run status), a
    SIGTERM is held back until they return, so the plugins can finish within the grace period
    launchers such as torchrun give before SIGKILL.
    """

    def __init__(self, dist_context: DistContext):
        self.dist = dist_context
        self.ending = False  # fit_exception/fit_end running: hold until the fit is left
        self.holding = False  # a checkpoint write: hold until the write is done
        self.pending: KeyboardInterrupt | None = None  # the held-back signal
        self._previous = None

    def _handler(self, signum, frame):
        interrupt = self._interrupt(signal.Signals(signum).name)  # peers checked now: in a user's kill they exit soon too
        if self.ending or self.holding:
            self.pending = self.pending or interrupt
            return
        raise interrupt

    def _interrupt(self, name: str) -> KeyboardInterrupt:
        lost = self.dist.lost_peers()
        if lost:
            return PeerLost(f"rank {', '.join(map(str, lost))} of this job died and the launcher stopped this "
                            f"rank ({name}); see that rank's output for the cause")
        return KeyboardInterrupt(f"signal {name}")

    @contextlib.contextmanager
    def held(self):
        """Keep a SIGTERM out of the block (a checkpoint write); it is raised when the block is done."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        interrupt, self.pending = self.pending, None
        if interrupt is not None:
            raise interrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        if self.pending is not None and exc_type is None:
            raise self.pending  # received while the fit was ending
        return False
