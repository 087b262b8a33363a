"""The ``analytics`` settings section, declared to segtrack through ``settings_schema`` (checked
with the core's settings, defaults filled in)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segtrack import Setting, checked_section, is_bool, is_str

SCHEMA = [
    Setting("analytics.cache_dir", "a folder path", lambda v: is_str(v) and bool(v), ".segtrack/analytics"),
    Setting("analytics.rank_at_fit_end", "true or false (print where a finished fit ranks)", is_bool, True),
    Setting("analytics.summary_at_cv_end", "true or false (print the cross-fold summary after cv)", is_bool, True),
]
DEFAULTS = {s.key.split(".", 1)[1]: s.default for s in SCHEMA}


def analytics_section(settings: Any) -> dict[str, Any]:
    """The section with defaults filled in, checked (for callers outside the CLI and trainer)."""
    return checked_section(settings, "analytics", SCHEMA, {"experiment": " (the experiment is run.experiment)"})


def default_experiment(settings: Any) -> str:
    """The one key naming the experiment: ``run.experiment``."""
    run = settings.get("run", {}) if isinstance(settings, Mapping) else (settings.get("run") or {})
    return (run or {}).get("experiment") or "segtrack"
