"""Models and datasets named in configuration: built-ins, entry points (``segtrack.models``,
``segtrack.datasets``), ``torchvision.<builder>``, ``smp.<Arch>`` and ``pkg.module:callable``
factories. Listing names imports nothing; building one imports only what it needs."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from segtrack.errors import ConfigError

MODEL_GROUP = "segtrack.models"
DATASET_GROUP = "segtrack.datasets"
BUILTIN_MODELS = {"unet": "segtrack.models.unet:build_unet"}
BUILTIN_DATASETS = ("synthetic", "folder")  # built by segtrack.data, not through a callable


def contributed(group: str) -> dict[str, str]:
    """Entry-point name -> ``module:attr`` (and distribution) for ``group``, nothing imported."""
    found = {}
    for ep in entry_points(group=group):
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
        found[ep.name] = f"{ep.value}  ({origin})"
    return found


def model_names() -> dict[str, str]:
    names = {name: f"{target}  (segtrack)" for name, target in BUILTIN_MODELS.items()}
    names.update(contributed(MODEL_GROUP))
    names["torchvision.<builder>"] = "torchvision.models.segmentation, when torchvision is installed"
    names["smp.<Arch>"] = "segmentation_models_pytorch, when it is installed"
    return names


def dataset_names() -> dict[str, str]:
    names = {
        "synthetic": "built-in synthetic shapes  (segtrack)",
        "folder": "images/ + masks/ under data.path  (segtrack)",
    }
    names.update(contributed(DATASET_GROUP))
    return names


def load_callable(target: str, setting: str) -> Callable[..., Any]:
    """Import ``pkg.module:callable`` (dots allowed after the colon)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"{setting} = {target!r} is not of the form 'package.module:callable': "
            f"name the module and the function that builds it"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{setting} = {target!r}: cannot import {module_name} ({exc}): install it or fix "
            f"the name (is its folder on PYTHONPATH?)"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{setting} = {target!r}: {module_name} has no {attr}: fix the name")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{setting} = {target!r} is not callable: name a function or class")
    return obj


def call_with(builder: Callable[..., Any], offered: Mapping[str, Any], kwargs: Mapping[str, Any], setting: str) -> Any:
    """Call ``builder`` with the offered arguments its signature names (all of them if it takes
    ``**kwargs``), plus the user's ``kwargs``, which win."""
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    chosen = {k: v for k, v in offered.items() if takes_any or k in params}
    chosen.update(kwargs)
    try:
        return builder(**chosen)
    except TypeError as exc:
        if not _raised_by_call(exc):
            raise
        raise ConfigError(f"{setting}: {exc}: fix the keyword arguments (model.kwargs / data.kwargs)") from None


def _raised_by_call(exc: TypeError) -> bool:
    """A TypeError about the call's own arguments, not one raised deeper inside the builder."""
    tb = exc.__traceback__
    return tb is not None and tb.tb_next is None


# -- models ------------------------------------------------------------------------------------


def build_model(model_cfg: Mapping[str, Any], num_classes: int, dims: int):
    """The ``torch.nn.Module`` that ``model.factory`` or ``model.name`` names."""
    offered = {"in_channels": model_cfg["in_channels"], "num_classes": num_classes, "dims": dims}
    kwargs = dict(model_cfg.get("kwargs") or {})
    if model_cfg.get("factory"):
        model = call_with(load_callable(model_cfg["factory"], "model.factory"), offered, kwargs, "model.factory")
    else:
        name = model_cfg["name"]
        if name == "unet":
            offered |= {"width": model_cfg["width"], "depth": model_cfg["depth"]}
        model = _model_builder(name, dims, offered, kwargs)
    import torch

    if not isinstance(model, torch.nn.Module):
        source = model_cfg.get("factory") or model_cfg["name"]
        raise ConfigError(
            f"the model builder {source!r} returned a {type(model).__name__}, not a torch.nn.Module: "
            f"return the model itself"
        )
    return model


def _model_builder(name: str, dims: int, offered: dict, kwargs: dict):
    if name.startswith("torchvision."):
        return _torchvision_model(name.removeprefix("torchvision."), dims, offered, kwargs)
    if name.startswith("smp."):
        return _smp_model(name.removeprefix("smp."), dims, offered, kwargs)
    targets = dict(BUILTIN_MODELS)
    if name not in targets:  # built-in names win; only other names need the entry-point scan
        targets.update({ep.name: ep.value for ep in entry_points(group=MODEL_GROUP)})
    if name not in targets:
        known = ", ".join([*sorted(targets), "torchvision.<builder>", "smp.<Arch>"])
        raise ConfigError(
            f"model.name = {name!r} is not a known model ({known}): fix the name, install the package "
            f"that provides it, or set model.factory = 'package.module:callable'"
        )
    return call_with(load_callable(targets[name], f"model.name = {name!r}"), offered, kwargs, f"model.name = {name!r}")


def _torchvision_model(builder: str, dims: int, offered: dict, kwargs: dict):
    segmentation = _import_zoo("torchvision.models.segmentation", f"torchvision.{builder}", "torchvision")
    available = sorted(n for n in segmentation.__all__ if n[0].islower() and callable(getattr(segmentation, n)))
    if builder not in available:
        raise ConfigError(f"torchvision has no segmentation model {builder!r}: use one of {', '.join(available)}")
    _needs_2d_rgb(f"torchvision.{builder}", dims, offered["in_channels"])
    # nothing is downloaded: no pretrained weights unless the user asks through model.kwargs
    options = {"weights": None, "weights_backbone": None, "num_classes": offered["num_classes"]} | kwargs
    return call_with(getattr(segmentation, builder), {}, options, f"model.name = 'torchvision.{builder}'")


def _smp_model(arch: str, dims: int, offered: dict, kwargs: dict):
    smp = _import_zoo("segmentation_models_pytorch", f"smp.{arch}", "segmentation-models-pytorch")
    if dims != 2:
        raise ConfigError(f"model.name = 'smp.{arch}' is a 2D model: set data.dims = 2 or choose a 3D model")
    import torch

    archs = sorted(
        n for n in dir(smp) if isinstance(getattr(smp, n), type) and issubclass(getattr(smp, n), torch.nn.Module)
    )
    if arch not in archs:
        raise ConfigError(f"segmentation_models_pytorch has no architecture {arch!r}: use one of {', '.join(archs)}")
    options = {"encoder_weights": None, "in_channels": offered["in_channels"], "classes": offered["num_classes"]}
    options |= kwargs
    model = call_with(getattr(smp, arch), {}, options, f"model.name = 'smp.{arch}'")
    # smp encoders down-sample 2**encoder_depth times (default 5): input sides must divide by it
    model.spatial_multiple = 2 ** int(options.get("encoder_depth", 5))
    return model


def _import_zoo(module: str, name: str, package: str):
    """An optional model package, or a ConfigError saying how to get a working one."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] == module.split(".")[0]:
            paired = (
                " (the release paired with your torch, e.g. 0.28.0 for torch 2.13.0)"
                if package == "torchvision"
                else ""
            )
            raise ConfigError(f"model.name = {name!r} needs {package}: pip install {package}{paired}") from None
        reason = f"ImportError: {exc}"
    except Exception as exc:  # e.g. a CUDA torchvision build beside a CPU torch: its operators do not load
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    import torch

    raise ConfigError(
        f"model.name = {name!r}: {package} is installed but cannot be imported ({reason}); its build "
        f"does not fit torch {torch.__version__}: install the build made for this torch (or its CPU "
        f"variant)"
    ) from None


def _needs_2d_rgb(name: str, dims: int, in_channels: int) -> None:
    if dims != 2:
        raise ConfigError(f"model.name = {name!r} is a 2D model: set data.dims = 2 or choose a 3D model")
    if in_channels != 3:
        raise ConfigError(
            f"model.name = {name!r} takes 3-channel images but model.in_channels = {in_channels}: "
            f"set model.in_channels = 3 (grey images are repeated to 3 channels)"
        )


def spatial_multiple(model) -> int:
    """What every input side must divide by (1 when the model takes any size)."""
    inner = getattr(model, "module", model)  # DDP
    return int(getattr(inner, "spatial_multiple", 1) or 1)


# -- datasets ----------------------------------------------------------------------------------


def build_dataset(data_cfg: Mapping[str, Any], offered: Mapping[str, Any]):
    """What ``data.factory`` or an entry-point ``data.source`` returns: one Dataset (split by
    segtrack) or a pair ``(train, val)``."""
    kwargs = dict(data_cfg.get("kwargs") or {})
    if data_cfg.get("factory"):
        setting = "data.factory"
        builder = load_callable(data_cfg["factory"], setting)
    else:
        name = data_cfg["source"]
        setting = f"data.source = {name!r}"
        targets = {ep.name: ep.value for ep in entry_points(group=DATASET_GROUP)}
        if name not in targets:
            known = ", ".join([*BUILTIN_DATASETS, *sorted(targets)])
            raise ConfigError(
                f"data.source = {name!r} is not a known dataset ({known}): fix the name, install the "
                f"package that provides it, or set data.factory = 'package.module:callable'"
            )
        builder = load_callable(targets[name], setting)
    built = call_with(builder, offered, kwargs, setting)
    if isinstance(built, (tuple, list)) and len(built) == 2:
        return built[0], built[1]
    if isinstance(built, Mapping) and "train" in built:
        return built["train"], built.get("val")
    return built, None
