"""Frozen records handed to hooks. Fields are only ever added, never renamed or removed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def freeze(value: Any) -> Any:
    """Deep read-only copy of plain config data: dicts become mappingproxies, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain mutable copy of frozen data (dicts and lists), e.g. to serialise it."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class RunInfo:
    """One fit: who runs it, on what, with which resolved settings."""

    run_name: str
    config: Mapping[str, Any]  # resolved settings, read-only, nested by section
    device: str
    rank: int
    world_size: int
    local_rank: int
    # fold index in cross-validation (0-based; run names and the console count from 1), None for a plain fit
    fold: int | None
    num_folds: int | None
    cv_id: str | None  # shared by every fold of one cross-validation
    train_sha256: str  # order-independent fingerprint of the training split
    val_sha256: str  # the same for the validation (test) split
    num_train: int
    num_val: int
    num_parameters: int
    start_epoch: int  # first epoch this process trains (> 0 when resumed)
    resumed_from: str | None  # checkpoint path when resumed
    segtrack_version: str
    plugins: tuple[tuple[str, str], ...]  # (name, version) of every registered plugin
    batches_per_epoch: int = 0  # training batches per epoch on this rank; 0 when the loader has no length
    spatial_dims: int = 2  # 2 for images (N, C, H, W), 3 for volumes (N, C, D, H, W)
    num_classes: int = 0  # including background (class 0)
    class_names: tuple[str, ...] = ()  # one per class: data.class_names, else "0", "1", ...
    model_name: str = ""  # model.name, or the class of a model passed in code ("pkg.module.Class")
    # where the data comes from: "synthetic", "folder:<absolute path>", "dataset:<entry point name>",
    # "factory:<module:callable>", or "python:<module.Class>" of a Dataset/DataLoader passed in code
    data_source: str = ""
    # how train_sha256/val_sha256 identify the data: "arrays" (the built-in data), "sample_digest"
    # (the dataset's own per-sample hashes: the folder's file bytes), "inputs" (the inputs a dataset
    # keeps in .data, MONAI-style), "loaded" (what epoch 0 loaded: the two are "" until epoch 0's
    # validation_end, whose run and every later one hold them)
    fingerprint_kind: str = ""
    study_id: str | None = None  # set when the fit is (a fold of) a trial of a study (``run_study``)
    trial: int | None = None  # the trial's number in its study
    max_epochs: int = 0  # the epochs the fit is set to run (train.epochs, a loop's max_epochs); 0 when unknown
    # the loop that runs the fit: "segtrack" (SegmentationTrainer), "own" (a loop driving FitSession),
    # "lightning" or "ignite" (segtrack.integrations)
    loop: str = "segtrack"
    # what computed the validation logits: "whole image", "segtrack.sliding_window(roi_size=...)",
    # or the class of an inferer passed in code (e.g. "monai.inferers.SlidingWindowInferer"); "" unknown
    inferer: str = ""
    # unique per fit (a resumed fit gets a new one): lets one plugin find what another recorded of
    # this very fit (the analytics plugin leaves the tracker's row of it out of the ranking it prints)
    fit_id: str = ""


@dataclass(frozen=True)
class StepResult:
    """One optimizer step."""

    epoch: int
    batch_index: int  # index within the epoch
    global_step: int  # training batches since the fit began, counting resumed ones (= optimizer steps when
    # train.accumulate = 1; batches with nothing labelled or a skipped non-finite loss count, but fire no hook)
    loss: float
    lr: float
    batch_size: int


@dataclass(frozen=True)
class ValidationSample:
    """One validation image with its truth and the model's prediction (numpy arrays)."""

    image: Any  # float32 array, channels x (depth x) height x width
    mask: Any  # int64 array, (depth x) height x width, class ids; -1 where data.ignore_index was
    prediction: Any  # int64 array, (depth x) height x width, class ids


@dataclass(frozen=True)
class ValidationResult:
    """The validation pass at the end of one epoch."""

    epoch: int
    val_loss: float
    val_dice: float  # mean Dice over foreground classes present in truth or prediction
    val_iou: float  # mean IoU over the same classes
    per_class_dice: tuple[float, ...]  # index = class id; NaN where the class never occurs
    num_samples: int
    samples: tuple[ValidationSample, ...] = ()  # a fixed few, the same every epoch
    per_class_iou: tuple[float, ...] = ()  # index = class id; NaN where the class never occurs


@dataclass(frozen=True)
class ValidationBatch:
    """One validation batch with the model's output, on the training device (do not modify)."""

    epoch: int
    batch_index: int
    images: Any  # float tensor (N, C, *spatial)
    masks: Any  # int64 tensor (N, *spatial), class ids; -1 where ignored
    logits: Any  # float tensor (N, num_classes, *spatial)
    predictions: Any  # int64 tensor (N, *spatial): argmax of logits


@dataclass(frozen=True)
class EpochResult:
    """One finished epoch (training and validation)."""

    epoch: int  # 0-based
    # train_loss, val_loss, val_dice, val_iou, lr, val_dice_<class>, val_iou_<class> (classes present
    # so far) and every metric plugins contributed through validation_metrics
    metrics: Mapping[str, float]
    monitor: str  # name of the monitored metric, e.g. "val_dice"
    is_best: bool  # this epoch improved the monitored metric
    best_value: float
    best_epoch: int
    duration_s: float
    # training batches since the fit began at this epoch's end (StepResult.global_step of its last
    # batch): the x-axis that per-step and per-epoch curves share
    global_step: int = 0


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint file that was just written atomically."""

    path: str
    kind: str  # "best", "last" or "epoch"
    epoch: int
    monitor: str
    value: float  # the monitored metric at that epoch
    size_bytes: int


@dataclass(frozen=True)
class ExportInfo:
    """A model export, checked in onnxruntime against torch on the preview validation samples."""

    path: str
    format: str  # "onnx"
    opset: int
    epoch: int  # epoch of the exported (best) weights
    input_shape: tuple[int, ...]  # the preview batch used for the parity check
    max_abs_diff: float
    parity_ok: bool  # max_abs_diff <= export.tolerance x max(1, logit_scale)
    logit_scale: float = 0.0  # the largest magnitude of torch's logits on the check's input
    tolerance: float = 0.0  # export.tolerance, relative to that scale


@dataclass(frozen=True)
class PluginFailure:
    """A plugin hook that raised; reported once, counted every time."""

    plugin: str
    hook: str
    count: int
    error: str  # "ExceptionType: message" of the first failure


@dataclass(frozen=True)
class FitResult:
    """The outcome of one fit."""

    status: str  # "completed", "stopped" (a plugin asked), "failed" or "interrupted"
    epochs_completed: int
    best_value: float
    best_epoch: int
    monitor: str
    final_metrics: Mapping[str, float]  # metrics of the last completed epoch
    best_metrics: Mapping[str, float]  # metrics of the best epoch
    best_checkpoint: str | None
    last_checkpoint: str | None
    export: ExportInfo | None
    export_error: str | None  # why the export failed, when it did (the fit still completes)
    stop_reason: str | None
    error: str | None  # "ExceptionType: message" when failed or interrupted
    plugin_failures: tuple[PluginFailure, ...] = field(default=())
    fold: int | None = None
    duration_s: float = 0.0


@dataclass(frozen=True)
class CrossValidationInfo:
    """A cross-validation about to run its folds."""

    cv_id: str
    num_folds: int
    config: Mapping[str, Any]
    run_name: str
    study_id: str | None = None  # set when the cross-validation is one trial of a study
    trial: int | None = None


@dataclass(frozen=True)
class CrossValidationResult:
    """Every fold's result and the summary across folds."""

    cv_id: str
    num_folds: int
    folds: tuple[FitResult, ...]
    # metric -> {"mean", "std", "min", "max"} over folds, from each fold's best epoch
    summary: Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class StudyInfo:
    """A study about to run its trials: fits of one base configuration, a few settings changed per
    trial by a searching plugin (segtrack-optuna)."""

    study_name: str
    study_id: str  # the study's id, shared by every process that joins it (where the searching plugin keeps one)
    config: Mapping[str, Any]  # the base settings every trial starts from
    space: Mapping[str, Any]  # setting key -> its search range, as the searching plugin states it
    attributes: Mapping[str, str]  # what the searching plugin records about it (sampler, pruner, storage)
    objective: str  # the metric a trial is scored by (``checkpoint.monitor``)
    direction: str  # "max" or "min" (``checkpoint.mode``)
    folds: int | None  # each trial is a cross-validation with this many folds; None: one fit
    run_name: str


@dataclass(frozen=True)
class TrialResult:
    """One finished trial of a study."""

    study_name: str
    study_id: str
    number: int  # the trial's number in the study (shared by every process that joined it)
    params: Mapping[str, Any]  # setting key -> the value this trial ran with
    state: str  # "completed", "pruned" or "failed"
    value: float | None  # the objective as the study records it: the fit's best monitored value (the
    # folds' mean in a CV); a pruned trial's as the searching plugin scores it (Optuna: its last report)
    epochs: int  # epochs trained (summed over folds)
    error: str | None  # "ExceptionType: message" when failed
    fit: FitResult | None  # the fit, or None (a CV, or a trial that failed before training)
    cross_validation: CrossValidationResult | None
    best_number: int | None  # the study's best trial so far, across every process that joined it
    best_value: float | None
    duration_s: float = 0.0
    retry_of: int | None = None  # the number of the trial this one ran again (its worker was stopped)
    interrupted: bool = False  # the worker was stopped during the trial (SIGTERM, Ctrl-C): it may run again


@dataclass(frozen=True)
class StudyResult:
    """What this process ran of a study."""

    study_name: str
    study_id: str
    status: str  # "completed" (no trial left to run) or "interrupted"
    trials: tuple[TrialResult, ...]  # the trials this process ran, in order
    best_number: int | None  # the study's best trial, across every process
    best_value: float | None
    best_params: Mapping[str, Any]
