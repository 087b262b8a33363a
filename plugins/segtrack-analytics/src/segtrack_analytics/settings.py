"""The ``analytics`` settings section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segtrack import ConfigError

DEFAULTS: dict[str, Any] = {
    "experiment": "",  # empty: mlflow.experiment, else run.experiment
    "cache_dir": ".segtrack/analytics",
    "rank_at_fit_end": True,  # print where a finished fit ranks among the experiment's runs
    "summary_at_cv_end": True,  # print the cross-fold summary of the experiment after `segtrack cv`
}
TYPES = {"experiment": str, "cache_dir": str, "rank_at_fit_end": bool, "summary_at_cv_end": bool}


def analytics_section(settings: Any) -> dict[str, Any]:
    raw = settings.get("analytics", {}) if isinstance(settings, Mapping) else (settings.get("analytics") or {})
    given = {str(k).lower(): v for k, v in dict(raw or {}).items()}
    problems = [f"analytics.{k}: unknown setting (known: {', '.join(DEFAULTS)})" for k in given if k not in DEFAULTS]
    section = {**DEFAULTS, **{k: v for k, v in given.items() if k in DEFAULTS}}
    for key, kind in TYPES.items():
        if not isinstance(section[key], kind):
            problems.append(f"analytics.{key} = {section[key]!r} is invalid: expected {kind.__name__}")
    if problems:
        raise ConfigError("invalid analytics settings:\n  " + "\n  ".join(problems))
    return section


def default_experiment(settings: Any) -> str:
    section = analytics_section(settings)
    mlflow = settings.get("mlflow", {}) or {}
    return (
        section["experiment"]
        or mlflow.get("experiment")
        or (settings.get("run", {}) or {}).get("experiment")
        or "segtrack"
    )
