"""The ``sweep`` settings section, declared to segtrack through ``settings_schema``."""

from __future__ import annotations

from collections.abc import Mapping

from segtrack import Setting, is_int, is_str, one_of

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
EXPORTS = ("best", "all", "none")


def _is_table(value: object) -> bool:
    return isinstance(value, Mapping)


def _is_count(value: object) -> bool:
    return is_int(value) and value >= 0  # type: ignore[operator]


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
]
