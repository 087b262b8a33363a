"""A study read back from its storage: one row per trial, as Optuna records it (for
``segtrack runs sweep`` and ``segtrack runs plot --study``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtrack import ConfigError, redact
from segtrack_optuna.storage import open_storage

STATES = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


@dataclass(frozen=True)
class StudyTable:
    name: str
    direction: str  # "maximize" or "minimize"
    params: list[str]  # setting keys searched, in the order first seen
    log_scale: set[str]  # params searched on a log scale
    rows: list[dict[str, Any]]  # trial, state, value, epochs, duration_s, run, error, then one column per param


def read_study(name: str, url: str, stale_after_s: int = 180) -> StudyTable:
    """The study's trials. A trial still RUNNING whose heartbeat is older than ``stale_after_s``
    is shown "lost" (its worker is gone; the next worker to start or finish a trial queues it again)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise ConfigError(
            f"no Optuna storage at {url}: run `segtrack sweep` here first, or pass the study's --storage URL"
        )
    storage = open_storage(url, heartbeat_s=1, stale_after_s=stale_after_s)
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
    lost = set(storage._get_stale_trial_ids(study._study_id))
    for trial in study.get_trials(deepcopy=False):
        for key, distribution in trial.distributions.items():
            if key not in params:
                params.append(key)
            if getattr(distribution, "log", False):
                log_scale.add(key)
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        error = trial.user_attrs.get("segtrack.error")
        if "segtrack.retried" in trial.user_attrs:
            error = f"{error or 'failed'}; run again as trial {trial.user_attrs['segtrack.retried']}"
        rows.append(
            {
                "trial": trial.number,
                "state": "lost" if trial._trial_id in lost else STATES.get(trial.state.name, trial.state.name.lower()),
                "value": trial.value,
                "epochs": int(trial.user_attrs.get("segtrack.epochs", len(trial.intermediate_values))),
                "duration_s": duration,
                "run": trial.user_attrs.get("mlflow.run_name"),
                "error": error,
                **{f"params.{key}": _masked(value) for key, value in trial.params.items()},
            }
        )
    for row in rows:
        for key in params:
            row.setdefault(f"params.{key}", None)
    return StudyTable(name, study.direction.name.lower(), params, log_scale, rows)


def _masked(value: Any) -> Any:
    """A sampled value as shown: a URL's password masked (the storage keeps what the trial ran with)."""
    return redact(value) if isinstance(value, str) else value
