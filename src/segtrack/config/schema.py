"""Settings schemas, the core's and each plugin's (``settings_schema`` hook), checked in one pass
by one validator. Every problem is reported together, each as: key, value given, what
is allowed. Plugin defaults are filled in by the same pass."""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segtrack.errors import ConfigError

_REQUIRED = object()


@dataclass(frozen=True)
class Setting:
    """One key of a settings section.

    :param key: ``"section.name"``; a plugin's section is the plugin's name.
    :param allowed: what is allowed, in words (shown in the error).
    :param check: returns True for a valid value (a non-finite float is always refused).
    :param default: filled in when the key is not given; without one, the key must be given.
    :param secret: the value is shown as ``***`` in errors.
    """

    key: str
    allowed: str
    check: Callable[[Any], bool] | None = None
    default: Any = _REQUIRED
    secret: bool = False

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]


# -- checks a schema can reuse -----------------------------------------------------------------


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_str(value: Any) -> bool:
    return isinstance(value, str)


def is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def one_of(*choices: Any) -> Callable[[Any], bool]:
    """The value is one of ``choices`` (``True`` is not ``1``)."""
    return lambda value: any(value == c and type(value) is type(c) for c in choices)


# -- validation --------------------------------------------------------------------------------


def validate(
    config: dict[str, Any], schema: Sequence[Setting], sections: Iterable[str], secrets: Iterable[str] = ()
) -> list[str]:
    """Check ``sections`` of ``config`` (plain nested dicts, lower-case names, as read from every
    layer) against ``schema``, filling in defaults. Returns every problem, each one line: unknown
    keys (with the closest known one), missing keys, and values their check refuses (key, value
    given, what is allowed; ``***`` for a secret setting, for a key in ``secrets`` (those
    configs/.secrets.toml defines) and for a table holding one). The one validator of segtrack's
    settings, core and plugins alike."""
    hidden = {key.lower() for key in secrets}
    problems = _unknown_keys(config, schema, sections)
    for setting in schema:
        section = config.setdefault(setting.section, {})
        if not isinstance(section, dict):
            continue  # reported by _unknown_keys
        name = setting.key.split(".", 1)[1]
        if name not in section:
            if setting.default is _REQUIRED:
                problems.append(f"{setting.key}: missing (allowed: {setting.allowed})")
            else:
                section[name] = copy.deepcopy(setting.default)
        elif not _condition(setting)(section[name]):
            secret = setting.secret or any(k == setting.key or k.startswith(f"{setting.key}.") for k in hidden)
            shown = "'***'" if secret else repr(section[name])
            problems.append(f"{setting.key} = {shown} is invalid: allowed is {setting.allowed}")
    return problems


def raise_problems(problems: Sequence[str], what: str = "settings") -> None:
    if problems:
        raise ConfigError(f"invalid {what}:\n  " + "\n  ".join(problems))


def _condition(setting: Setting) -> Callable[[Any], bool]:
    def ok(value: Any) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return setting.check is None or bool(setting.check(value))

    return ok


def _unknown_keys(settings: Any, schema: Sequence[Setting], sections: Iterable[str]) -> list[str]:
    problems = []
    for section in sections:
        given = settings.get(section) if hasattr(settings, "get") else None
        if given is None:
            continue
        if not isinstance(given, Mapping):
            problems.append(f"{section}: expected a table of settings, got {given!r}")
            continue
        known = [s.key.split(".", 1)[1] for s in schema if s.section == section]
        for key in given:
            key = str(key).lower()
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                fix = f"did you mean {section}.{hint[0]}?" if hint else f"known keys: {', '.join(known)}"
                problems.append(f"{section}.{key}: unknown setting ({fix})")
    return problems


def checked_section(settings: Any, section: str, schema: Sequence[Setting], hints: Mapping[str, str] = {}) -> dict:
    """One section of ``settings`` (a mapping or Dynaconf object), checked against ``schema`` by the
    same validator and with defaults filled in: for code that reads a plugin's section outside the
    CLI and trainer (a plugin's own API; those two hand ``settings_loaded`` checked sections).
    ``hints`` add a word to the error of an unknown key (e.g. where a removed key went)."""
    raw = settings.get(section, {}) if hasattr(settings, "get") else {}
    config = {section: {str(k).lower(): v for k, v in dict(raw or {}).items()}}
    problems = [
        problem.replace(": unknown setting", f": unknown setting{hints[key]}", 1)
        if (key := problem.split(":", 1)[0].split(".", 1)[-1]) in hints
        else problem
        for problem in validate(config, [s for s in schema if s.section == section], [section])
    ]
    raise_problems(problems, f"{section} settings")
    return config[section]
