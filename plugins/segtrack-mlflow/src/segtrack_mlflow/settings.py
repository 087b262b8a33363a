"""The ``mlflow`` settings section: defaults and checks (messages name key, value and fix)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segtrack import ConfigError

DEFAULTS: dict[str, Any] = {
    "tracking_uri": "",  # empty: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    "experiment": "",  # empty: run.experiment
    "offline": "auto",  # auto: spool and ship when reachable | fail: error before training
    "spool_dir": ".segtrack/spool",
    "drain_timeout": 30.0,  # seconds fit_end waits for the spool to reach MLflow
    "request_timeout": 10.0,  # seconds per HTTP request (MLFLOW_HTTP_REQUEST_TIMEOUT wins if set)
    "log_every_n_steps": 10,  # per-step train_loss every N optimizer steps; 0 = off
    "checkpoint_policy": "best+last",
    "sample_overlays": 4,  # validation overlays (image | truth | prediction) at the best epoch
    "username": "",  # basic auth; or MLFLOW_TRACKING_USERNAME
    "password": "",  # put it in configs/.secrets.toml; or MLFLOW_TRACKING_PASSWORD
}
POLICIES = ("best+last", "best", "last", "all", "none")
CHECKS = {
    "tracking_uri": (lambda v: isinstance(v, str), "a URI string"),
    "experiment": (lambda v: isinstance(v, str), "a string"),
    "offline": (lambda v: v in ("auto", "fail"), '"auto" or "fail"'),
    "spool_dir": (lambda v: isinstance(v, str) and bool(v), "a folder path"),
    "drain_timeout": (lambda v: _number(v) and v >= 0, "a number of seconds >= 0"),
    "request_timeout": (lambda v: _number(v) and v > 0, "a number of seconds > 0"),
    "log_every_n_steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "checkpoint_policy": (lambda v: v in POLICIES, " | ".join(POLICIES)),
    "sample_overlays": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 16, "0 to 16"),
    "username": (lambda v: isinstance(v, str), "a string"),
    "password": (lambda v: isinstance(v, str), "a string"),
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def mlflow_section(settings: Any) -> dict[str, Any]:
    """The validated ``mlflow`` section with defaults filled in."""
    raw = settings.get("mlflow", {}) if isinstance(settings, Mapping) else (settings.get("mlflow") or {})
    given = {str(k).lower(): v for k, v in dict(raw or {}).items()}
    problems = []
    for key in given:
        if key not in DEFAULTS:
            problems.append(f"mlflow.{key}: unknown setting (known: {', '.join(DEFAULTS)})")
    section = {**DEFAULTS, **{k: v for k, v in given.items() if k in DEFAULTS}}
    for key, (check, allowed) in CHECKS.items():
        if not check(section[key]):
            shown = "***" if key == "password" else repr(section[key])
            problems.append(f"mlflow.{key} = {shown} is invalid: allowed is {allowed}")
    if problems:
        raise ConfigError("invalid mlflow settings:\n  " + "\n  ".join(problems))
    return section
