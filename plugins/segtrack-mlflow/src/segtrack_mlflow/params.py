"""Config -> MLflow params: flattened with dots, secrets dropped, long values truncated."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from segtrack_mlflow.uri import redact

MAX_PARAM_VALUE = 6000
MAX_PARAM_KEY = 250
SECRET_WORDS = re.compile(r"(password|passwd|token|secret|credential|api_?key|(^|[._])key$|private)", re.I)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def is_secret(key: str) -> bool:
    return bool(SECRET_WORDS.search(key))


def to_params(config: Mapping[str, Any], secret_keys: Iterable[str] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """Returns (params, overflow): params within MLflow's limits, and the full text of each value
    that had to be truncated (to be saved as an artifact)."""
    secrets = set(secret_keys)
    params, overflow = {}, {}
    for key, value in flatten(config).items():
        if key in secrets or is_secret(key):
            continue
        text = _as_text(value)
        if "://" in text:
            text = redact(text)
        key = key[:MAX_PARAM_KEY]
        if len(text) > MAX_PARAM_VALUE:
            overflow[key] = text
            note = f"... [truncated, see params/{key}.txt]"
            text = text[: MAX_PARAM_VALUE - len(note)] + note
        params[key] = text
    return params, overflow


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_as_text(v) for v in value) + "]"
    return str(value)
