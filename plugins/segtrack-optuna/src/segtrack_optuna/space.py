"""The search space of ``[sweep.space]``: one dimension per setting key.

``"train.lr" = { low = 1e-4, high = 1e-2, log = true }`` is a float range, ``{ low = 1, high = 4 }``
an int range (both ends whole numbers), ``step`` makes either stepped, and a list such as
``"model.width" = [8, 16, 32]`` is a categorical choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segtrack import ConfigError, is_int, is_number

_RANGE_KEYS = {"low", "high", "log", "step"}
_SCALARS = (str, int, float, bool, type(None))
EXAMPLE = '"train.lr" = { low = 1e-4, high = 1e-2, log = true } or "model.width" = [8, 16, 32]'


@dataclass(frozen=True)
class Dimension:
    key: str  # the setting, "section.name"
    kind: str  # "float", "int" or "categorical"
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def candidates(self) -> list[Any]:
        """The values that bound the range: checked against the settings schema before any trial."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def admits(self, value: Any) -> bool:
        """Whether ``value`` lies in this dimension (a choice, or a number within the range)."""
        if self.kind == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if not is_number(value) or (self.kind == "int" and not is_int(value)):
            return False
        return self.low <= value <= self.high

    def grid(self) -> list[Any] | None:
        """Every value a grid search visits, or None where the range is continuous."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.step is None and self.kind == "float":
            return None
        step = self.step or 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1  # type: ignore[operator]
        values = [self.low + i * step for i in range(count)]  # type: ignore[operator]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def describe(self) -> Any:
        if self.kind == "categorical":
            return list(self.choices)
        described: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            described["log"] = True
        if self.step is not None:
            described["step"] = self.step
        return described


def parse_space(raw: Mapping[str, Any], sampler: str) -> list[Dimension]:
    """Dimensions from ``[sweep.space]``; one ``ConfigError`` names every malformed entry."""
    if not raw:
        raise ConfigError(f"[sweep.space] is empty: add one entry per setting to search, e.g. {EXAMPLE}")
    dimensions, problems = [], []
    for key, spec in raw.items():
        try:
            dimensions.append(_dimension(str(key), spec))
        except ValueError as exc:
            problems.append(f"{key!r}: {exc}")
    if sampler == "grid":
        problems += [
            f"{d.key!r}: a grid search needs a list of choices or a range with a step"
            for d in dimensions
            if d.grid() is None
        ]
    if problems:
        raise ConfigError("[sweep.space] " + "; ".join(problems) + f" (e.g. {EXAMPLE})")
    return dimensions


def _dimension(key: str, spec: Any) -> Dimension:
    if "." not in key:
        raise ValueError("name a setting as section.key, e.g. train.lr")
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("the list of choices is empty")
        if not all(isinstance(c, _SCALARS) for c in spec):
            raise ValueError("choices must be plain values (numbers, strings, true/false), not lists or tables")
        if len(set(map(repr, spec))) != len(spec):
            raise ValueError("a choice is listed twice")
        return Dimension(key, "categorical", choices=tuple(spec))
    if not isinstance(spec, Mapping):
        raise ValueError("give a table { low, high [, log, step] } or a list of choices")
    unknown = set(spec) - _RANGE_KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}: a range takes low, high, log, step")
    low: Any = spec.get("low")
    high: Any = spec.get("high")
    step, log = spec.get("step"), spec.get("log", False)
    if not (is_number(low) and is_number(high)):
        raise ValueError("a range needs numbers low and high")
    if not isinstance(log, bool):
        raise ValueError("log must be true or false")
    if step is not None and not (is_number(step) and step > 0):
        raise ValueError("step must be a number > 0")
    if not low < high:
        raise ValueError(f"the range is empty (low = {low} is not below high = {high})")
    if log and low <= 0:
        raise ValueError("a log range needs low > 0")
    if log and step is not None:
        raise ValueError("a range is either log or stepped, not both")
    whole = is_int(low) and is_int(high) and (step is None or is_int(step))
    if step is not None and step > high - low:
        raise ValueError(f"step {step} is larger than the range {low}..{high}")
    return Dimension(key, "int" if whole else "float", low, high, step, log)


def parse_enqueued(pairs: Sequence[str], dimensions: Sequence[Dimension]) -> dict[str, Any]:
    """One trial's values from ``--enqueue key=value ...`` (values read as TOML: ``0.01``, ``16``,
    ``"adamw"``); every key must be searched and every value lie in its range. Keys left out are
    sampled when the trial starts."""
    import tomllib

    by_key = {d.key: d for d in dimensions}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--enqueue {pair!r} is not key=value: write e.g. --enqueue train.lr=0.01 model.width=16")
        if key not in by_key:
            raise ConfigError(
                f"--enqueue {key}: not a key of [sweep.space] (it searches {', '.join(by_key)}): enqueue values of "
                "searched keys only"
            )
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word: a string choice
        if not by_key[key].admits(value):
            raise ConfigError(
                f"--enqueue {key}={raw.strip()}: outside its range {by_key[key].describe()}: "
                "give a value the study searches"
            )
        values[key] = value
    return values
