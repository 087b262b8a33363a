"""The ``sweep`` settings section, declared to segtrack through ``settings_schema``."""

from __future__ import annotations

from collections.abc import Mapping

from segtrack import Setting, is_int, is_number, is_str, one_of

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
EXPORTS = ("best", "all", "none")


def _is_table(value: object) -> bool:
    return isinstance(value, Mapping)


def _is_count(value: object) -> bool:
    return is_int(value) and value >= 0  # type: ignore[operator]


def _is_positive(value: object) -> bool:
    return is_int(value) and value >= 1  # type: ignore[operator]


def _is_seconds(value: object) -> bool:
    return is_number(value) and value >= 0  # type: ignore[operator]


SCHEMA = [
    Setting(
        "sweep.space",
        'a table of setting key -> range, e.g. "train.lr" = { low = 1e-4, high = 1e-2, log = true }',
        _is_table,
        {},
    ),
    Setting("sweep.study", "a study name (or give --study)", is_str, ""),
    Setting("sweep.trials", "a whole number >= 1 (or give --trials)", lambda v: is_int(v) and v >= 1, 10),
    Setting("sweep.storage", "an Optuna RDB URL; empty: sqlite:///optuna.db in the current folder", is_str, ""),
    Setting("sweep.sampler", " | ".join(SAMPLERS), one_of(*SAMPLERS), "tpe"),
    Setting("sweep.pruner", " | ".join(PRUNERS), one_of(*PRUNERS), "median"),
    Setting("sweep.seed", "a whole number >= 0", _is_count, 0),
    Setting("sweep.export", "best (the best trial so far) | all | none", one_of(*EXPORTS), "best"),
    Setting("sweep.startup_trials", "a whole number >= 0 (trials finished before pruning starts)", _is_count, 2),
    Setting("sweep.warmup_epochs", "a whole number >= 0 (epochs a trial runs before it can be pruned)", _is_count, 1),
    Setting(
        "sweep.retries",
        "a whole number >= 0 (times a trial is run again after its worker was preempted or killed)",
        _is_count,
        1,
    ),
    Setting(
        "sweep.retries_failed",
        "a whole number >= 0 (times a trial that failed by itself, e.g. on its settings, is run again)",
        _is_count,
        0,
    ),
    Setting(
        "sweep.heartbeat_s",
        "a whole number of seconds >= 1 (how often a running trial says it is alive)",
        _is_positive,
        30,
    ),
    Setting(
        "sweep.stale_after_s",
        "a whole number of seconds, more than sweep.heartbeat_s (a trial silent this long: its worker is dead)",
        _is_positive,
        180,
    ),
    Setting(
        "sweep.timeout_s", "seconds >= 0 after which no new trial starts in a worker (0: no limit)", _is_seconds, 0
    ),
]


def check_timing(section: Mapping) -> None:
    """Cross-key rule of the section (each key alone is checked by the schema)."""
    from segtrack import ConfigError

    if section["stale_after_s"] <= section["heartbeat_s"]:
        raise ConfigError(
            f"sweep.stale_after_s = {section['stale_after_s']} is not more than sweep.heartbeat_s = "
            f"{section['heartbeat_s']}: a live trial would be taken as dead; allow a few heartbeats "
            "(e.g. 180 and 30)"
        )
