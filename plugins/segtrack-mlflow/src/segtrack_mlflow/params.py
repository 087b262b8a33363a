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


# settings that say where things go or how the machinery runs, not what the model learns: they
# stay out of the params (hyperparameters) and are in the logged config.toml
PLUMBING = (
    "plugins.",
    "mlflow.",
    "analytics.",
    "progress.",
    "sweep.",  # how a study searches: its parent run records the search as study.* params
    "export.dir",
    "checkpoint.dir",
    "checkpoint.keep",
    "train.num_workers",
    "train.device",
    "infer.output_device",
)


def is_plumbing(key: str) -> bool:
    return key.startswith(PLUMBING)


def to_params(
    config: Mapping[str, Any], secret_keys: Iterable[str] = (), drop_plumbing: bool = False
) -> tuple[dict[str, str], dict[str, str]]:
    """Returns (params, overflow): the hyperparameters within MLflow's limits, and the full text of
    each value that had to be truncated (to be saved as an artifact)."""
    secrets = {k.lower() for k in secret_keys}
    params, overflow = {}, {}
    for key, value in flatten(config).items():
        if key.lower() in secrets or is_secret(key) or (drop_plumbing and is_plumbing(key)):
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


def to_toml(config: Mapping[str, Any], secret_keys: Iterable[str] = ()) -> str:
    """The resolved settings as TOML (``[section]`` tables), secrets left out, URIs masked."""
    import json

    secrets = {k.lower() for k in secret_keys}
    lines = ["# resolved segtrack settings of this run (secrets left out)"]
    for section, values in config.items():
        if not isinstance(values, Mapping):
            continue
        lines.append(f"\n[{section}]")
        for key, value in _without_secrets(values, section, secrets).items():
            lines.append(f"{_toml_key(str(key))} = {_toml_value(value, json)}")
    return "\n".join(lines) + "\n"


def _without_secrets(values: Mapping[str, Any], prefix: str, secrets: set[str]) -> dict[str, Any]:
    """``values`` (the table at dotted ``prefix``) without secret keys, at any depth."""
    kept: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}"
        if dotted.lower() in secrets or is_secret(dotted):
            continue
        kept[key] = _without_secrets(value, dotted, secrets) if isinstance(value, Mapping) else value
    return kept


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json_quote(key)


def json_quote(text: str) -> str:
    import json

    return json.dumps(text)


def _toml_value(value: Any, json: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(redact(value) if "://" in value else value)
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, (int, float)):
        return (
            repr(value)
            if not isinstance(value, float) or value not in (float("inf"), -float("inf"))
            else ("inf" if value > 0 else "-inf")
        )
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v, json)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, json) for v in value) + "]"
    return json.dumps(str(value))
