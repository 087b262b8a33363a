"""``sweep()``: the study ``segtrack sweep`` runs, from Python."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from segtrack import ConfigError, StudyResult, checked_section
from segtrack_optuna.plugin import TrialReporter
from segtrack_optuna.settings import SCHEMA, check_timing
from segtrack_optuna.space import parse_enqueued, parse_space
from segtrack_optuna.storage import default_storage
from segtrack_optuna.trials import OptunaTrials


def sweep(
    settings: Any = None,
    *,
    study: str | None = None,
    trials: int | None = None,
    storage: str | None = None,
    folds: int | None = None,
    timeout: float | None = None,
    enqueue: Iterable[Iterable[str]] = (),
    force_join: bool = False,
    plugins: Iterable[Any] = (),
    plugin_manager: Any = None,
) -> StudyResult:
    """Run trials of an Optuna study until it has none left (or this process ran ``trials``).

    :param settings: as for ``SegmentationTrainer`` (``None`` reads the layers); ``[sweep]`` holds
        the space, sampler, pruner, seed, export, and the defaults of the other arguments.
    :param study: the study's name (``sweep.study``); created on first use, joined afterwards.
    :param trials: the study's number of trials (``sweep.trials``); also the most this process runs.
    :param storage: an Optuna RDB URL (``sweep.storage``; default ``sqlite:///optuna.db`` here).
    :param folds: cross-validate each trial over this many folds (its objective: the folds' mean).
    :param timeout: seconds after which this process starts no new trial (``sweep.timeout_s``).
    :param enqueue: trials to queue first, each a list of ``"key=value"`` strings of searched keys.
    :param force_join: join a study created with other base settings (warned once per difference).
    :param plugins: plugin objects for every trial besides the installed ones.
    """
    from segtrack import check_study_name, load_settings, run_study

    settings = load_settings() if settings is None else settings
    section = checked_section(settings, "sweep", SCHEMA)
    name = study if study is not None else section["study"]
    if not name:
        raise ConfigError("no study name: give --study NAME (or set sweep.study)")
    count = trials if trials is not None else section["trials"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"--trials {count} is not allowed: give a whole number >= 1")
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise ConfigError(f"--folds {folds} is not allowed: cross-validation needs at least 2 folds")
    url = storage if storage is not None else (section["storage"] or default_storage())
    if not url.strip():
        raise ConfigError("--storage is empty: give an Optuna RDB URL, e.g. sqlite:///optuna.db")
    seconds = timeout if timeout is not None else section["timeout_s"]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ConfigError(f"--timeout {seconds} is not allowed: give seconds >= 0 (0: no limit)")
    check_timing(section)
    check_study_name(name)
    dimensions = parse_space(section["space"], section["sampler"])
    points = [parse_enqueued(list(pairs), dimensions) for pairs in enqueue]
    train = settings.get("train") or {}
    epochs = int(train.get("epochs", 8)) * (folds or 1)
    source = OptunaTrials(
        name, dimensions, section, url, count, epochs, timeout_s=float(seconds), enqueue=points, force_join=force_join
    )
    return run_study(
        source,
        study_name=name,
        settings=settings,
        folds=folds,
        export=section["export"],
        plugins=[TrialReporter(source), *plugins],
        plugin_manager=plugin_manager,
    )
