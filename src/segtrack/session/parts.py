"""What a user brought, described for the run's records: a model's class and the constructor
arguments it keeps, an optimizer's class and defaults, a scheduler's settings, a factory by what it
returns when called once on a probe, a dataset's class, size and transforms."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import Any

MAX_ITEMS = 12  # a list longer than this is described by its length


def qualified(obj: Any) -> str:
    kind = obj if isinstance(obj, type) else type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def readable(value: Any) -> bool:
    """A plain value a person can read in a params table."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return True
    return isinstance(value, (list, tuple)) and len(value) <= MAX_ITEMS and all(readable(v) for v in value)


def init_arguments(obj: Any) -> dict[str, Any]:
    """The constructor arguments ``obj`` keeps under their own names (``self.channels = channels``,
    as MONAI's networks and transforms do), readable values only."""
    try:
        names = [
            p.name
            for p in inspect.signature(type(obj).__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return {}
    found = {}
    for name in names:
        for attribute in (name, f"_{name}"):
            try:
                value = getattr(obj, attribute, inspect.Parameter.empty)
            except Exception:  # a property that needs more than the object (a LightningModule's trainer)
                value = inspect.Parameter.empty
            if value is not inspect.Parameter.empty and not callable(value):
                found[name] = (list(value) if isinstance(value, tuple) else value) if readable(value) else _short(value)
                break
    return found


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else f"{qualified(value)}(...)"


def describe_model(model: Any) -> dict[str, Any]:
    """``class``, its constructor arguments where readable, and the parameter count."""
    return {
        "class": qualified(model),
        **init_arguments(model),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# torch's implementation switches, left out while off: they do not change what is learnt
OPTIMIZER_SWITCHES = ("foreach", "fused", "capturable", "differentiable", "maximize", "decoupled_weight_decay")


def describe_optimizer(optimizer: Any) -> dict[str, Any]:
    """An optimizer's class and defaults (lr, momentum, ...), implementation switches left out while off."""
    kept = {}
    for key, value in optimizer.defaults.items():
        if value is None or not readable(value) or (key in OPTIMIZER_SWITCHES and not value):
            continue
        kept[key] = list(value) if isinstance(value, tuple) else value
    return {"class": qualified(optimizer), **kept}


def describe_scheduler(scheduler: Any) -> dict[str, Any]:
    """A scheduler's class and its own settings (not the optimizer, the current position or the lrs)."""
    skip = {"optimizer", "base_lrs", "last_epoch", "verbose", "lr_lambdas"}
    kept = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in vars(scheduler).items()
        if not k.startswith("_") and k not in skip and readable(v)
    }
    return {"class": qualified(scheduler), **kept}


def describe_loss(loss: Any) -> dict[str, Any]:
    if inspect.isfunction(loss) or inspect.isbuiltin(loss):
        return {"function": f"{loss.__module__}.{loss.__qualname__}"}
    return {"class": qualified(loss), **init_arguments(loss)}


def describe_optimizer_factory(factory: Any) -> dict[str, Any]:
    """A factory ``params -> Optimizer`` by the optimizer it builds for one probe parameter."""
    import torch

    if isinstance(factory, torch.optim.Optimizer):
        return describe_optimizer(factory)
    try:
        built = factory([torch.nn.Parameter(torch.zeros(1))])
    except Exception as exc:
        return {"factory": _callable_name(factory), "probe": f"raised {type(exc).__name__}"}
    if not isinstance(built, torch.optim.Optimizer):
        return {"factory": _callable_name(factory), "probe": f"returned a {type(built).__name__}"}
    return {**describe_optimizer(built), "factory": _callable_name(factory)}


def describe_scheduler_factory(factory: Any, optimizer: Any = None) -> dict[str, Any]:
    """A factory ``optimizer -> scheduler`` by the scheduler it builds on a probe optimizer."""
    import torch

    if not callable(factory) or isinstance(factory, torch.optim.lr_scheduler.LRScheduler):
        return describe_scheduler(factory)
    probe = optimizer or torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        built = factory(probe)
    except Exception as exc:
        return {"factory": _callable_name(factory), "probe": f"raised {type(exc).__name__}"}
    return {**describe_scheduler(built), "factory": _callable_name(factory)}


def _callable_name(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', '?')}.{name}"


def describe_data(data: Any) -> dict[str, Any]:
    """A dataset (or a DataLoader's) by class, size, batch size and transforms."""
    import torch

    described: dict[str, Any] = {}
    dataset = data
    if isinstance(data, torch.utils.data.DataLoader):
        dataset = data.dataset
        described["batch_size"] = data.batch_size
    described["class"] = qualified(dataset)
    with contextlib.suppress(TypeError):
        described["samples"] = len(dataset)
    transform = getattr(dataset, "transform", None)
    if transform is not None:
        described["transform"] = describe_transforms(transform)
    return described


def describe_transforms(transform: Any) -> list[str] | str:
    """A transform chain (MONAI's or torchvision's ``Compose``) as one line per transform."""
    chain = getattr(transform, "transforms", None)
    if isinstance(chain, (list, tuple)):
        return [_transform_line(t) for t in chain][:40]
    return _transform_line(transform)


def _transform_line(transform: Any) -> str:
    args = init_arguments(transform)
    text = ", ".join(f"{k}={v!r}" for k, v in args.items() if not isinstance(v, str) or len(v) < 60)
    return f"{type(transform).__name__}({text})"[:300]


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` laid over ``base`` section by section (a user's params win over descriptions)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out
