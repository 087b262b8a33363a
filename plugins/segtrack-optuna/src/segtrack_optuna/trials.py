"""The Optuna side of a study: create or join it, hand out trials, record their verdicts.

Exactly N trials however many processes join: the process that creates the study also queues
its N trials (Optuna's WAITING state, values not yet sampled); every process then only takes
queued trials, each with one atomic WAITING -> RUNNING update in the storage, and never creates
one. A process that joins before the queue exists waits for it (the study's ``segtrack.trials``
attribute marks it complete).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from segtrack import ConfigError, redact
from segtrack_optuna.space import Dimension

log = logging.getLogger("segtrack.sweep")
QUEUE_ATTR = "segtrack.trials"
JOIN_TIMEOUT_S = 60.0


def default_storage() -> str:
    return f"sqlite:///{Path('optuna.db').resolve()}"


def storage_url(url: str) -> str:
    """SQLAlchemy 2 maps postgresql:// to psycopg 3; with only psycopg2 installed, say so in the URL."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def open_storage(url: str) -> Any:
    """Optuna's RDB storage for ``url``; an unreachable or malformed URL is one ConfigError. Workers
    that start together on a fresh database race to create its tables: the losers try again."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(storage_url(url))
        except (IntegrityError, ProgrammingError):
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))  # another process is creating the schema
        except Exception as exc:  # unreachable server, unknown driver, a typo in the URL
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"cannot open the Optuna storage {redact(url)} ({redact(reason)[:300]}): give a reachable RDB URL "
                "with --storage or sweep.storage, e.g. sqlite:///optuna.db or postgresql://user@host/db"
            ) from None
    raise AssertionError("unreachable")


class OptunaTrials:
    """A ``segtrack.TrialSource`` backed by one Optuna study in an RDB storage."""

    def __init__(
        self,
        name: str,
        dimensions: Sequence[Dimension],
        section: Mapping[str, Any],
        storage: str,
        trials: int,
        epochs_per_trial: int,
    ):
        self.name, self.dimensions, self.section = name, list(dimensions), section
        self.url, self.limit, self.epochs_per_trial = storage, trials, epochs_per_trial
        self.space: Mapping[str, Any] = {d.key: d.describe() for d in self.dimensions}
        self.study: Any = None
        self.storage: Any = None
        self.current: Any = None  # the optuna.Trial running now
        self.pruned = False
        self.epochs_seen = 0  # epochs the running trial trained (counted by the reporter)
        self.taken = 0

    # -- TrialSource ----------------------------------------------------------------------------

    def candidate_values(self) -> dict[str, list[Any]]:
        return {d.key: d.candidates() for d in self.dimensions}

    def open(self, direction: str) -> dict[str, str]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = self.storage = self._storage()
        wanted: Literal["maximize", "minimize"] = "maximize" if direction == "max" else "minimize"
        created = True
        try:
            self.study = optuna.create_study(
                study_name=self.name, storage=storage, direction=wanted, sampler=self._sampler(0), pruner=self._pruner()
            )
        except optuna.exceptions.DuplicatedStudyError:
            created = False
            # a joining process draws its own random numbers, or it would repeat the creator's trials
            self.study = optuna.load_study(
                study_name=self.name, storage=storage, sampler=self._sampler(os.getpid()), pruner=self._pruner()
            )
        if not created:
            self._check_joined(wanted)
        queued = self._queue_trials(created)
        log.info(
            "study %s in %s: %s, %d trials in all",
            self.name,
            redact(self.url),
            "created" if created else "joined",
            queued,
        )
        return {
            "storage": redact(self.url),
            "sampler": self.section["sampler"],
            "pruner": self.section["pruner"],
            "seed": str(self.section["seed"]),
            "trials": str(queued),
            "direction": wanted,
            "joined": str(not created).lower(),
        }

    def next_trial(self) -> tuple[int, dict[str, Any]] | None:
        if self.taken >= self.limit:
            return None
        trial = self._take_queued()
        if trial is None:
            return None
        self.taken += 1
        self.current, self.pruned, self.epochs_seen = trial, False, 0
        params = {d.key: d.suggest(trial) for d in self.dimensions}
        trial.set_user_attr("segtrack.pid", os.getpid())
        return trial.number, params

    def finish(self, number: int, value: float | None, error: str | None) -> tuple[str, float | None]:
        import optuna
        from optuna.trial import TrialState

        trial = self.current
        assert trial is not None and trial.number == number
        self.current = None
        trial.set_user_attr("segtrack.epochs", self.epochs_seen)
        if error is not None:
            trial.set_user_attr("segtrack.error", error[:2000])
        if self.pruned:  # Optuna scores a pruned trial by its last reported value
            return "pruned", self.study.tell(trial, state=TrialState.PRUNED).value
        if error is not None or value is None or not math.isfinite(value):
            self.study.tell(trial, state=TrialState.FAIL)
            return "failed", None
        try:
            return "completed", self.study.tell(trial, value).value
        except optuna.exceptions.UpdateFinishedTrialError:  # finished elsewhere (a stale-trial cleanup)
            return "failed", None

    def best(self) -> tuple[int, float, dict[str, Any]] | None:
        try:
            best = self.study.best_trial
        except ValueError:  # no completed trial yet
            return None
        return best.number, float(best.value), dict(best.params)

    def close(self) -> None:
        if self.current is not None:  # a trial that never reached finish(): not left RUNNING
            from optuna.trial import TrialState

            self.study.tell(self.current, state=TrialState.FAIL)
            self.current = None

    # -- pruning (called by the reporter plugin) ------------------------------------------------

    def report(self, value: float, step: int) -> bool:
        """Report one epoch's objective; True when the pruner says this trial should stop."""
        if self.current is None or not math.isfinite(value):
            return False
        self.current.report(value, step)
        if self.section["pruner"] != "none" and self.current.should_prune():
            self.pruned = True
        return self.pruned

    # -- helpers --------------------------------------------------------------------------------

    def _storage(self) -> Any:
        return open_storage(self.url)

    def _sampler(self, offset: int) -> Any:
        import optuna

        seed = self.section["seed"] + offset
        kind = self.section["sampler"]
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if kind == "grid":  # every trial is queued with its grid point: nothing is left to sample
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, self.section["startup_trials"]))

    def _pruner(self) -> Any:
        import optuna

        kind = self.section["pruner"]
        if kind == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=self.section["startup_trials"], n_warmup_steps=self.section["warmup_epochs"]
            )
        if kind == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, self.epochs_per_trial))
        return optuna.pruners.NopPruner()

    def _check_joined(self, wanted: str) -> None:
        have = self.study.direction.name.lower()
        if have != wanted:
            raise ConfigError(
                f"study {self.name!r} already exists to {have} its objective, not to {wanted}: use another --study "
                "or set checkpoint.mode to match it"
            )
        recorded = self.study.user_attrs.get("segtrack.space")
        if recorded is not None and json.loads(recorded) != json.loads(json.dumps(self.space)):
            raise ConfigError(
                f"study {self.name!r} already exists with another search space ({recorded}): use another --study "
                "or the same [sweep.space]"
            )

    def _queue_trials(self, created: bool) -> int:
        """The creator queues the study's trials; a joiner waits for the queue, and a joiner asking
        for more trials than the study has queues the difference (one process extending a study)."""
        wanted = self._grid_capped(self.limit)
        if created:
            self.study.set_user_attr("segtrack.space", json.dumps(self.space))
            for point in self._grid_points(wanted):
                self.study.enqueue_trial(point, skip_if_exists=False)
            self.study.set_user_attr(QUEUE_ATTR, wanted)
            return wanted
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while QUEUE_ATTR not in self.study.user_attrs:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"study {self.name!r} exists but its trials were never queued (the process that created it "
                    "stopped early): use another --study name"
                )
            time.sleep(0.5)
        total = len(self.study.get_trials(deepcopy=False))
        for point in self._grid_points(wanted)[total:]:
            self.study.enqueue_trial(point, skip_if_exists=False)
        if wanted > total:
            self.study.set_user_attr(QUEUE_ATTR, wanted)
        return max(wanted, total)

    def _grid_points(self, count: int) -> list[dict[str, Any]]:
        """The values queued with each trial: a grid search's points (shuffled by sweep.seed, the
        same order in every process), else nothing (the sampler picks when the trial starts)."""
        if self.section["sampler"] != "grid":
            return [{} for _ in range(count)]
        import itertools
        import random

        keys = [d.key for d in self.dimensions]
        points = [dict(zip(keys, values)) for values in itertools.product(*(d.grid() or () for d in self.dimensions))]
        random.Random(self.section["seed"]).shuffle(points)
        return points[:count]

    def _grid_capped(self, trials: int) -> int:
        if self.section["sampler"] != "grid":
            return trials
        size = math.prod(len(d.grid() or ()) for d in self.dimensions)
        if trials > size:
            log.warning("the grid has %d points: %d trials instead of %d", size, size, trials)
        return min(trials, size)

    def _take_queued(self) -> Any:
        """A queued trial, taken atomically (WAITING -> RUNNING); None when the queue is empty."""
        import optuna
        from optuna.trial import TrialState

        storage = self.storage
        study_id = storage.get_study_id_from_name(self.name)
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
            try:
                if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    return optuna.Trial(self.study, trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None
