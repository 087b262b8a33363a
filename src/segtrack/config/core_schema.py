"""The core's settings: one ``Setting`` per key of the core sections, and the checks that relate
two keys. Plugins declare theirs through the ``settings_schema`` hook; both are checked together
by ``segtrack.config.settings.resolve_settings``."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from segtrack.config.schema import Setting

METRIC_NAMES = ("train_loss", "val_loss", "val_dice", "val_iou")
LOSS_NAMES = ("ce_dice", "ce", "dice", "focal_dice")
_number = (int, float)


def typed(types: tuple[type, ...], check: Callable[[Any], bool] | None) -> Callable[[Any], bool]:
    """A check: the value is one of ``types`` (a bool is not an int) and passes ``check``."""

    def ok(value: Any) -> bool:
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return False
        return check is None or bool(check(value))

    return ok


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_target(value: str) -> bool:
    module, sep, attr = value.partition(":")
    return bool(sep) and all(
        re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", part) for part in (module, attr)
    )


CORE_SCHEMA: list[Setting] = [
    Setting(
        "run.name",
        "a name of letters, digits, _ . - and spaces, not starting with . and without '..' or '/' "
        "(it names files and folders; a path is refused, not changed)",
        typed((str,), lambda v: bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\- ]{0,99}", v)) and ".." not in v),
    ),
    Setting("run.experiment", "a non-empty string", typed((str,), lambda v: bool(v.strip()))),
    Setting("train.epochs", "an integer >= 1", typed((int,), lambda v: v >= 1)),
    Setting("train.batch_size", "an integer >= 1", typed((int,), lambda v: v >= 1)),
    Setting("train.lr", "a number > 0", typed(_number, lambda v: v > 0)),
    Setting("train.weight_decay", "a number >= 0", typed(_number, lambda v: v >= 0)),
    Setting("train.optimizer", '"adamw", "adam" or "sgd"', typed((str,), lambda v: v in ("adamw", "adam", "sgd"))),
    Setting("train.momentum", "a number from 0 to 1 (exclusive)", typed(_number, lambda v: 0 <= v < 1)),
    Setting("train.nesterov", "true or false", typed((bool,), None)),
    Setting(
        "train.betas",
        "two numbers from 0 to 1 (exclusive), e.g. [0.9, 0.999]",
        typed((list,), lambda v: len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v)),
    ),
    Setting(
        "train.scheduler",
        '"cosine", "poly", "step" or "constant"',
        typed((str,), lambda v: v in ("cosine", "poly", "step", "constant")),
    ),
    Setting("train.scheduler_interval", '"epoch" or "step"', typed((str,), lambda v: v in ("epoch", "step"))),
    Setting("train.poly_power", "a number > 0", typed(_number, lambda v: v > 0)),
    Setting("train.step_size", "an integer >= 1", typed((int,), lambda v: v >= 1)),
    Setting("train.step_gamma", "a number in (0, 1]", typed(_number, lambda v: 0 < v <= 1)),
    Setting("train.warmup_epochs", "an integer >= 0", typed((int,), lambda v: v >= 0)),
    Setting(
        "train.loss",
        " | ".join(f'"{name}"' for name in LOSS_NAMES),
        typed((str,), lambda v: v in LOSS_NAMES),
    ),
    Setting(
        "train.class_weights",
        "[] or one number >= 0 per class (not all 0)",
        typed((list,), lambda v: all(_is_num(w) and w >= 0 for w in v) and (not v or any(w > 0 for w in v))),
    ),
    Setting("train.focal_gamma", "a number >= 0", typed(_number, lambda v: v >= 0)),
    Setting("train.accumulate", "an integer >= 1", typed((int,), lambda v: v >= 1)),
    Setting("train.clip_grad_norm", "a number >= 0 (0 = off)", typed(_number, lambda v: v >= 0)),
    Setting(
        "train.ema", "0 (off) or a decay between 0 and 1, e.g. 0.999", typed(_number, lambda v: v == 0 or 0 < v < 1)
    ),
    Setting("train.deep_supervision", "true or false", typed((bool,), None)),
    Setting("train.deep_supervision_drop_lowest", "true or false", typed((bool,), None)),
    Setting("train.max_nonfinite", "an integer >= 1", typed((int,), lambda v: v >= 1)),
    Setting("train.seed", "an integer >= 0", typed((int,), lambda v: v >= 0)),
    Setting(
        "train.device",
        '"auto", "cpu", "cuda" or "cuda:N"',
        typed((str,), lambda v: v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())),
    ),
    Setting("train.amp", '"auto", true or false', typed((str, bool), lambda v: v in ("auto", True, False))),
    Setting("train.num_workers", "an integer >= 0", typed((int,), lambda v: v >= 0)),
    Setting("train.dice_weight", "a number >= 0", typed(_number, lambda v: v >= 0)),
    Setting("train.augment", "true or false", typed((bool,), None)),
    Setting(
        "data.source",
        '"synthetic", "folder" or the name of a dataset an installed package contributes (segtrack plugins lists them)',
        typed((str,), lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", v))),
    ),
    Setting(
        "data.factory",
        '"" or "package.module:callable" returning a Dataset',
        typed((str,), lambda v: v == "" or _is_target(v)),
    ),
    Setting("data.kwargs", "a table of keyword arguments for the dataset builder", typed((dict,), None)),
    Setting(
        "data.normalize",
        '"auto", "percentile", "minmax", "imagenet" or "none"',
        typed((str,), lambda v: v in ("auto", "percentile", "minmax", "imagenet", "none")),
    ),
    Setting(
        "data.crop",
        "0 (no crop), a side >= 8, or one side per spatial axis, e.g. [128, 128]",
        typed(
            (int, list),
            lambda v: (
                (isinstance(v, int) and not isinstance(v, bool) and (v == 0 or v >= 8))
                or (
                    isinstance(v, list)
                    and 2 <= len(v) <= 3
                    and all(isinstance(c, int) and not isinstance(c, bool) and c >= 8 for c in v)
                )
            ),
        ),
    ),
    Setting("data.crop_foreground", "a probability from 0 to 1", typed(_number, lambda v: 0 <= v <= 1)),
    Setting("data.path", "a folder path (string)", typed((str,), None)),
    Setting("data.num_samples", "an integer >= 2", typed((int,), lambda v: v >= 2)),
    Setting("data.image_size", "an integer >= 8", typed((int,), lambda v: v >= 8)),
    Setting("data.num_classes", "an integer from 2 to 255", typed((int,), lambda v: 2 <= v <= 255)),
    Setting("data.val_fraction", "a number between 0 and 1 (exclusive)", typed(_number, lambda v: 0 < v < 1)),
    Setting("data.folds", "an integer >= 2", typed((int,), lambda v: v >= 2)),
    Setting("data.dims", "2 (images) or 3 (volumes)", typed((int,), lambda v: v in (2, 3))),
    Setting(
        "data.ignore_index",
        '"none" or the mask value (an integer >= 0) to leave out of loss and metrics, e.g. 255',
        typed((int, str), lambda v: v == "none" or (isinstance(v, int) and v >= 0)),
    ),
    Setting(
        "data.class_names",
        "a list of distinct names (letters, digits, _ . -), one per class, or []",
        typed(
            (list,),
            lambda v: (
                all(isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9_.\-]+", n) for n in v) and len(set(v)) == len(v)
            ),
        ),
    ),
    Setting(
        "infer.roi_size",
        "0 (whole image), a window side >= 1, or one side per spatial axis, e.g. [96, 96, 96]",
        typed(
            (int, list),
            lambda v: (
                (_is_int(v) and (v == 0 or v >= 1))
                or (isinstance(v, list) and 2 <= len(v) <= 3 and all(_is_int(c) and c >= 1 for c in v))
            ),
        ),
    ),
    Setting("infer.overlap", "a number from 0 to 1 (exclusive), e.g. 0.5", typed(_number, lambda v: 0 <= v < 1)),
    Setting("infer.mode", '"gaussian" or "constant"', typed((str,), lambda v: v in ("gaussian", "constant"))),
    Setting("infer.batch_size", "an integer >= 1", typed((int,), lambda v: v >= 1)),
    Setting("infer.output_device", '"cpu" or "model"', typed((str,), lambda v: v in ("cpu", "model"))),
    Setting(
        "model.name",
        '"unet", a model an installed package contributes, "torchvision.<builder>" or "smp.<Arch>"',
        typed((str,), lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", v))),
    ),
    Setting(
        "model.factory",
        '"" or "package.module:callable" returning a model',
        typed((str,), lambda v: v == "" or _is_target(v)),
    ),
    Setting("model.kwargs", "a table of keyword arguments for the model builder", typed((dict,), None)),
    Setting("model.in_channels", "an integer from 1 to 64", typed((int,), lambda v: 1 <= v <= 64)),
    Setting("model.width", "an integer from 1 to 512", typed((int,), lambda v: 1 <= v <= 512)),
    Setting("model.depth", "an integer from 1 to 6", typed((int,), lambda v: 1 <= v <= 6)),
    Setting("checkpoint.dir", "a non-empty folder path", typed((str,), lambda v: bool(v.strip()))),
    Setting(
        "checkpoint.monitor",
        f"a metric name: {' | '.join(METRIC_NAMES)}, val_dice_<class>, or one a plugin contributes",
        typed((str,), lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.\-/]+", v))),
    ),
    Setting("checkpoint.mode", '"max" or "min"', typed((str,), lambda v: v in ("max", "min"))),
    Setting("checkpoint.keep", "an integer >= 0", typed((int,), lambda v: v >= 0)),
    Setting("export.enabled", "true or false", typed((bool,), None)),
    Setting("export.dir", "a non-empty folder path", typed((str,), lambda v: bool(v.strip()))),
    Setting("export.opset", "an integer from 11 to 23", typed((int,), lambda v: 11 <= v <= 23)),
    Setting("export.tolerance", "a number > 0", typed(_number, lambda v: v > 0)),
    Setting("plugins.autoload", "true or false", typed((bool,), None)),
    Setting(
        "plugins.disabled", "a list of plugin names", typed((list,), lambda v: all(isinstance(n, str) and n for n in v))
    ),
    Setting("plugins.strict", "true or false", typed((bool,), None)),
    Setting("plugins.fit_end_timeout", "a number of seconds > 0", typed(_number, lambda v: v > 0)),
]
CORE_SECTIONS = frozenset(s.section for s in CORE_SCHEMA)


def related_problems(config: Mapping[str, Any]) -> list[str]:
    """Problems between two keys, each valid alone (a crop with more sides than axes, ...)."""
    problems = []
    data, train, infer = (_section(config, name) for name in ("data", "train", "infer"))
    crop, dims = data.get("crop"), data.get("dims")
    if isinstance(crop, list) and isinstance(dims, int) and len(crop) != dims:
        problems.append(
            f"data.crop = {crop!r} has {len(crop)} sides but data.dims = {dims}: give one side per "
            f"spatial axis, or a single number"
        )
    roi = infer.get("roi_size")
    if isinstance(roi, list) and isinstance(dims, int) and len(roi) != dims:
        problems.append(
            f"infer.roi_size = {roi!r} has {len(roi)} sides but data.dims = {dims}: give one side per "
            f"spatial axis, or a single number"
        )
    weights = train.get("class_weights")
    classes = data.get("num_classes")
    if isinstance(weights, list) and weights and isinstance(classes, int) and len(weights) != classes:
        problems.append(
            f"train.class_weights has {len(weights)} values but data.num_classes = {classes}: "
            f"give one weight per class, background first, or []"
        )
    if train.get("nesterov") is True and train.get("momentum") == 0:
        problems.append(
            "train.nesterov = true needs train.momentum > 0: set a momentum (e.g. 0.99) or nesterov = false"
        )
    warmup, epochs = train.get("warmup_epochs"), train.get("epochs")
    if isinstance(warmup, int) and isinstance(epochs, int) and 0 < epochs <= warmup:
        problems.append(
            f"train.warmup_epochs = {warmup} is not below train.epochs = {epochs}: the learning rate would "
            f"never leave its warm-up; use fewer warm-up epochs (e.g. {max(0, epochs // 10)}) or more epochs"
        )
    names, classes = data.get("class_names"), data.get("num_classes")
    if isinstance(names, list) and names and isinstance(classes, int) and len(names) != classes:
        problems.append(
            f"data.class_names has {len(names)} names but data.num_classes = {classes}: give one name "
            f"per class, background first, or []"
        )
    return problems


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = config.get(name)
    return value if isinstance(value, Mapping) else {}
