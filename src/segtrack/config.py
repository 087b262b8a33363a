"""Load and validate settings: built-in defaults < configs/settings.toml < --config FILE <
SEGTRACK_* environment variables < --set KEY=VALUE."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf
from dynaconf.utils.parse_conf import parse_conf_data

from segtrack.errors import ConfigError
from segtrack.schema import Setting

DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")
PROJECT_FILE = Path("configs") / "settings.toml"
SECRETS_FILE = Path("configs") / ".secrets.toml"
ENVIRONMENTS = ("default", "development", "testing", "production")
METRIC_NAMES = ("train_loss", "val_loss", "val_dice", "val_iou")
LOSS_NAMES = ("ce_dice", "ce", "dice", "focal_dice")

# key -> (allowed types, check or None, what is allowed, in words)
_number = (int, float)
SCHEMA: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "run.name": (
        (str,),
        lambda v: bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\- ]{0,99}", v)) and ".." not in v,
        "a name of letters, digits, _ . - and spaces, not starting with . and without '..' or '/' "
        "(it names files and folders; a path is refused, not changed)",
    ),
    "run.experiment": ((str,), lambda v: bool(v.strip()), "a non-empty string"),
    "train.epochs": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "train.batch_size": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "train.lr": (_number, lambda v: v > 0, "a number > 0"),
    "train.weight_decay": (_number, lambda v: v >= 0, "a number >= 0"),
    "train.optimizer": ((str,), lambda v: v in ("adamw", "adam", "sgd"), '"adamw", "adam" or "sgd"'),
    "train.momentum": (_number, lambda v: 0 <= v < 1, "a number from 0 to 1 (exclusive)"),
    "train.nesterov": ((bool,), None, "true or false"),
    "train.betas": (
        (list,),
        lambda v: len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v),
        "two numbers from 0 to 1 (exclusive), e.g. [0.9, 0.999]",
    ),
    "train.scheduler": (
        (str,),
        lambda v: v in ("cosine", "poly", "step", "constant"),
        '"cosine", "poly", "step" or "constant"',
    ),
    "train.scheduler_interval": ((str,), lambda v: v in ("epoch", "step"), '"epoch" or "step"'),
    "train.poly_power": (_number, lambda v: v > 0, "a number > 0"),
    "train.step_size": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "train.step_gamma": (_number, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "train.warmup_epochs": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "train.loss": (
        (str,),
        lambda v: v in LOSS_NAMES,
        " | ".join(f'"{name}"' for name in ("ce_dice", "ce", "dice", "focal_dice")),
    ),
    "train.class_weights": (
        (list,),
        lambda v: all(_is_num(w) and w >= 0 for w in v) and (not v or any(w > 0 for w in v)),
        "[] or one number >= 0 per class (not all 0)",
    ),
    "train.focal_gamma": (_number, lambda v: v >= 0, "a number >= 0"),
    "train.accumulate": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "train.clip_grad_norm": (_number, lambda v: v >= 0, "a number >= 0 (0 = off)"),
    "train.ema": (_number, lambda v: v == 0 or 0 < v < 1, "0 (off) or a decay between 0 and 1, e.g. 0.999"),
    "train.deep_supervision": ((bool,), None, "true or false"),
    "train.deep_supervision_drop_lowest": ((bool,), None, "true or false"),
    "train.max_nonfinite": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "train.seed": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "train.device": (
        (str,),
        lambda v: v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()),
        '"auto", "cpu", "cuda" or "cuda:N"',
    ),
    "train.amp": ((str, bool), lambda v: v in ("auto", True, False), '"auto", true or false'),
    "train.num_workers": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "train.dice_weight": (_number, lambda v: v >= 0, "a number >= 0"),
    "train.augment": ((bool,), None, "true or false"),
    "data.source": (
        (str,),
        lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", v)),
        '"synthetic", "folder" or the name of a dataset an installed package contributes (segtrack plugins lists them)',
    ),
    "data.factory": ((str,), lambda v: v == "" or _is_target(v), '"" or "package.module:callable" returning a Dataset'),
    "data.kwargs": ((dict,), None, "a table of keyword arguments for the dataset builder"),
    "data.normalize": (
        (str,),
        lambda v: v in ("auto", "percentile", "minmax", "imagenet", "none"),
        '"auto", "percentile", "minmax", "imagenet" or "none"',
    ),
    "data.crop": (
        (int, list),
        lambda v: (
            (isinstance(v, int) and not isinstance(v, bool) and (v == 0 or v >= 8))
            or (
                isinstance(v, list)
                and 2 <= len(v) <= 3
                and all(isinstance(c, int) and not isinstance(c, bool) and c >= 8 for c in v)
            )
        ),
        "0 (no crop), a side >= 8, or one side per spatial axis, e.g. [128, 128]",
    ),
    "data.crop_foreground": (_number, lambda v: 0 <= v <= 1, "a probability from 0 to 1"),
    "data.path": ((str,), None, "a folder path (string)"),
    "data.num_samples": ((int,), lambda v: v >= 2, "an integer >= 2"),
    "data.image_size": ((int,), lambda v: v >= 8, "an integer >= 8"),
    "data.num_classes": ((int,), lambda v: 2 <= v <= 255, "an integer from 2 to 255"),
    "data.val_fraction": (_number, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)"),
    "data.folds": ((int,), lambda v: v >= 2, "an integer >= 2"),
    "data.dims": ((int,), lambda v: v in (2, 3), "2 (images) or 3 (volumes)"),
    "data.ignore_index": (
        (int, str),
        lambda v: v == "none" or (isinstance(v, int) and v >= 0),
        '"none" or the mask value (an integer >= 0) to leave out of loss and metrics, e.g. 255',
    ),
    "data.class_names": (
        (list,),
        lambda v: all(isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9_.\-]+", n) for n in v) and len(set(v)) == len(v),
        "a list of distinct names (letters, digits, _ . -), one per class, or []",
    ),
    "infer.roi_size": (
        (int, list),
        lambda v: (
            (_is_int(v) and (v == 0 or v >= 1))
            or (isinstance(v, list) and 2 <= len(v) <= 3 and all(_is_int(c) and c >= 1 for c in v))
        ),
        "0 (whole image), a window side >= 1, or one side per spatial axis, e.g. [96, 96, 96]",
    ),
    "infer.overlap": (_number, lambda v: 0 <= v < 1, "a number from 0 to 1 (exclusive), e.g. 0.5"),
    "infer.mode": ((str,), lambda v: v in ("gaussian", "constant"), '"gaussian" or "constant"'),
    "infer.batch_size": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "infer.output_device": ((str,), lambda v: v in ("cpu", "model"), '"cpu" or "model"'),
    "model.name": (
        (str,),
        lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", v)),
        '"unet", a model an installed package contributes, "torchvision.<builder>" or "smp.<Arch>"',
    ),
    "model.factory": ((str,), lambda v: v == "" or _is_target(v), '"" or "package.module:callable" returning a model'),
    "model.kwargs": ((dict,), None, "a table of keyword arguments for the model builder"),
    "model.in_channels": ((int,), lambda v: 1 <= v <= 64, "an integer from 1 to 64"),
    "model.width": ((int,), lambda v: 1 <= v <= 512, "an integer from 1 to 512"),
    "model.depth": ((int,), lambda v: 1 <= v <= 6, "an integer from 1 to 6"),
    "checkpoint.dir": ((str,), lambda v: bool(v.strip()), "a non-empty folder path"),
    "checkpoint.monitor": (
        (str,),
        lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.\-/]+", v)),
        f"a metric name: {' | '.join(METRIC_NAMES)}, val_dice_<class>, or one a plugin contributes",
    ),
    "checkpoint.mode": ((str,), lambda v: v in ("max", "min"), '"max" or "min"'),
    "checkpoint.keep": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "export.enabled": ((bool,), None, "true or false"),
    "export.dir": ((str,), lambda v: bool(v.strip()), "a non-empty folder path"),
    "export.opset": ((int,), lambda v: 11 <= v <= 23, "an integer from 11 to 23"),
    "export.tolerance": (_number, lambda v: v > 0, "a number > 0"),
    "plugins.autoload": ((bool,), None, "true or false"),
    "plugins.disabled": (
        (list,),
        lambda v: all(isinstance(n, str) and n for n in v),
        "a list of plugin names",
    ),
    "plugins.strict": ((bool,), None, "true or false"),
    "plugins.fit_end_timeout": (_number, lambda v: v > 0, "a number of seconds > 0"),
}


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def ignore_index(data: Mapping[str, Any]) -> int | None:
    """``data.ignore_index`` as the loop uses it: None for "none"."""
    value = data["ignore_index"]
    return None if value == "none" else value


def class_names(data: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(data["class_names"]) or tuple(str(k) for k in range(data["num_classes"]))


CORE_SECTIONS = frozenset(key.split(".")[0] for key in SCHEMA)


def load_settings(
    config_file: str | os.PathLike | None = None,
    env: str | None = None,
    overrides: Iterable[str] = (),
    project_dir: str | os.PathLike | None = None,
) -> Dynaconf:
    """Resolve settings from every layer and validate the core sections.

    ``overrides`` are ``"section.key=value"`` strings (values parsed as TOML, so ``3`` is an int,
    ``[1, 2]`` a list, ``abc`` a string). Raises ``ConfigError`` naming every problem found.
    """
    base = Path(project_dir) if project_dir is not None else Path.cwd()
    files = [DEFAULTS_FILE]
    for optional in (base / PROJECT_FILE, base / SECRETS_FILE):
        if optional.is_file():
            files.append(optional)
    if config_file is not None:
        path = Path(config_file)
        if path.is_dir():
            raise ConfigError(
                f"config file {str(path)!r} is a folder: pass a TOML file to --config "
                f"(e.g. {str(path / 'settings.toml')!r})"
            )
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist: pass an existing TOML file to --config")
        files.append(path)
    for path in files:
        _check_toml(path)
    env = env or os.environ.get("SEGTRACK_ENV") or "development"
    if env not in ENVIRONMENTS:
        raise ConfigError(f"unknown environment {env!r}: use one of {', '.join(ENVIRONMENTS[1:])}")
    settings = Dynaconf(
        envvar_prefix="SEGTRACK",
        settings_files=[str(f) for f in files],
        environments=True,
        env=env,
        env_switcher="SEGTRACK_ENV",
        merge_enabled=True,
        load_dotenv=False,
    )
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise ConfigError(f"--set {item!r} is not SECTION.KEY=VALUE: write e.g. --set train.epochs=3")
        settings.set(key, parse_conf_data(raw.strip(), tomlfy=True))
    validate(resolved_dict(settings))
    return settings


def _check_toml(path: Path) -> None:
    import tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}): fix the syntax at that line") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}: check the path and its permissions") from None
    stray = [k for k in data if k not in ENVIRONMENTS and k.lower() != "dynaconf_merge"]
    if stray:
        raise ConfigError(
            f"{path}: top-level table(s) {', '.join(map(repr, stray))} are not an environment: "
            f"nest settings under [{'|'.join(ENVIRONMENTS)}], e.g. [default.train]"
        )


def resolved_dict(settings: Dynaconf) -> dict[str, Any]:
    """Plain nested dict of every section (lower-case names), without Dynaconf internals."""
    out = {}
    for key, value in settings.as_dict().items():
        if isinstance(value, Mapping):
            out[key.lower()] = plain(value)
    return out


def plain(value: Any) -> Any:
    """Settings as plain dicts and lists, section and key names in lower case."""
    if isinstance(value, Mapping):
        return {str(k).lower(): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def validate(config: Mapping[str, Any]) -> None:
    """Check every core key's type and range, and reject unknown keys in core sections."""
    from segtrack.schema import dynaconf_of
    from segtrack.schema import validate as check_schema

    problems = []
    try:
        check_schema(dynaconf_of(config), CORE_SCHEMA, sorted(CORE_SECTIONS))
    except ConfigError as exc:
        problems = str(exc).split("\n  ")[1:]
    data = config.get("data", {})
    crop, dims = data.get("crop"), data.get("dims")
    if isinstance(crop, list) and isinstance(dims, int) and len(crop) != dims:
        problems.append(
            f"data.crop = {crop!r} has {len(crop)} sides but data.dims = {dims}: give one side per "
            f"spatial axis, or a single number"
        )
    roi = config.get("infer", {}).get("roi_size")
    if isinstance(roi, list) and isinstance(dims, int) and len(roi) != dims:
        problems.append(
            f"infer.roi_size = {roi!r} has {len(roi)} sides but data.dims = {dims}: give one side per "
            f"spatial axis, or a single number"
        )
    weights = config.get("train", {}).get("class_weights")
    classes = data.get("num_classes")
    if isinstance(weights, list) and weights and isinstance(classes, int) and len(weights) != classes:
        problems.append(
            f"train.class_weights has {len(weights)} values but data.num_classes = {classes}: "
            f"give one weight per class, background first, or []"
        )
    train = config.get("train", {})
    if train.get("nesterov") is True and train.get("momentum") == 0:
        problems.append(
            "train.nesterov = true needs train.momentum > 0: set a momentum (e.g. 0.99) or nesterov = false"
        )
    names, classes = data.get("class_names"), data.get("num_classes")
    if isinstance(names, list) and names and isinstance(classes, int) and len(names) != classes:
        problems.append(
            f"data.class_names has {len(names)} names but data.num_classes = {classes}: give one name "
            f"per class, background first, or []"
        )
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))


def _typed(types: tuple[type, ...], check: Any) -> Callable[[Any], bool]:
    """A schema check from the table's (allowed types, range check) pair; bool is not an int."""

    def ok(value: Any) -> bool:
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return False
        return check is None or bool(check(value))

    return ok


CORE_SCHEMA = [Setting(key, allowed, _typed(types, check)) for key, (types, check, allowed) in SCHEMA.items()]


_MISSING = object()


def _is_target(value: str) -> bool:
    module, sep, attr = value.partition(":")
    return bool(sep) and all(
        re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", part) for part in (module, attr)
    )


def checked_settings(settings: Any, manager: Any, known_plugins: Iterable[str] = ()) -> dict[str, Any]:
    """Settings after the plugins' schemas (``settings_schema``) are checked: a plain dict with
    plugin defaults filled in. Sections must be core sections or named after a known plugin."""
    from segtrack.schema import Setting, dynaconf_of
    from segtrack.schema import validate as check_schema

    store = dynaconf_of(settings) if isinstance(settings, Mapping) else settings
    config = resolved_dict(store)
    check_plugin_sections(config, set(manager.names()) | set(known_plugins))
    schema: list[Setting] = []
    for plugin, declared in manager.collect("settings_schema").items():
        for setting in declared:
            if not isinstance(setting, Setting) or setting.section != plugin:
                manager.report_failure(
                    plugin,
                    "settings_schema",
                    TypeError(f"declares {setting!r}: return segtrack.Setting objects keyed '{plugin}.<key>'"),
                )
                break
        else:
            schema.extend(declared)
    check_schema(store, schema, sorted({s.section for s in schema}))
    return resolved_dict(store)


def check_plugin_sections(config: Mapping[str, Any], plugin_names: Iterable[str]) -> None:
    """Every non-core section must belong to a known (installed, registered or disabled) plugin."""
    names = set(plugin_names)
    stray = [s for s in config if s not in CORE_SECTIONS and s not in names]
    if stray:
        allowed = sorted(CORE_SECTIONS | names)
        parts = []
        for section in stray:
            hint = difflib.get_close_matches(section, allowed, n=1)
            parts.append(f"{section!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        raise ConfigError(
            f"unknown settings section(s) {', '.join(parts)}: a section is a core section or the "
            f"name of an installed plugin ({', '.join(allowed)})"
        )


def secret_keys(project_dir: str | os.PathLike | None = None) -> frozenset[str]:
    """Dotted keys defined in configs/.secrets.toml: never to be logged anywhere."""
    import tomllib

    path = (Path(project_dir) if project_dir else Path.cwd()) / SECRETS_FILE
    if not path.is_file():
        return frozenset()
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    keys = set()

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}.{k.lower()}" if prefix else k.lower(), v)
        else:
            keys.add(prefix)

    for env_table in data.values():
        walk("", env_table)
    return frozenset(keys)


def inference_config(config: Mapping[str, Any], project_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``model``, ``data`` and ``infer`` sections a checkpoint carries for ``segtrack predict``,
    without any key that configs/.secrets.toml defines (other sections, plugins' included, stay out)."""
    secrets = secret_keys(project_dir)
    return {
        section: {k: v for k, v in config[section].items() if f"{section}.{k}" not in secrets}
        for section in ("model", "data", "infer")
    }
