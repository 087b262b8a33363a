"""A study read back from its storage: one row per trial, as Optuna records it (for
``segtrack runs sweep`` and ``segtrack runs plot --study``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtrack import ConfigError, redact
from segtrack_optuna.trials import open_storage

STATES = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


@dataclass(frozen=True)
class StudyTable:
    name: str
    direction: str  # "maximize" or "minimize"
    params: list[str]  # setting keys searched, in the order first seen
    log_scale: set[str]  # params searched on a log scale
    rows: list[dict[str, Any]]  # trial, state, value, epochs, duration_s, error, then one column per param


def read_study(name: str, url: str) -> StudyTable:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise ConfigError(
            f"no Optuna storage at {url}: run `segtrack sweep` here first, or pass the study's --storage URL"
        )
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage=storage)
        found = f"it holds {', '.join(map(repr, names[:10]))}" if names else "it holds no study"
        raise ConfigError(
            f"no study {name!r} in {redact(url)} ({found}): pass --study NAME (and --storage URL)"
        ) from None
    params: list[str] = []
    log_scale: set[str] = set()
    rows = []
    for trial in study.get_trials(deepcopy=False):
        for key, distribution in trial.distributions.items():
            if key not in params:
                params.append(key)
            if getattr(distribution, "log", False):
                log_scale.add(key)
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        rows.append(
            {
                "trial": trial.number,
                "state": STATES.get(trial.state.name, trial.state.name.lower()),
                "value": trial.value,
                "epochs": int(trial.user_attrs.get("segtrack.epochs", len(trial.intermediate_values))),
                "duration_s": duration,
                "error": trial.user_attrs.get("segtrack.error"),
                **{f"params.{key}": value for key, value in trial.params.items()},
            }
        )
    for row in rows:
        for key in params:
            row.setdefault(f"params.{key}", None)
    return StudyTable(name, study.direction.name.lower(), params, log_scale, rows)
