"""The Optuna side of a study: create or join it, hand out trials, record their verdicts.

Exactly N trials however many processes join, and however many of them die: the process that
creates the study also queues its N trials (Optuna's WAITING state, values not yet sampled); every
process then only takes queued trials and never creates one. Everything that changes what the study
holds (creating and queueing it, extending it, taking a trial, re-queueing one) happens under the
study's lock (``storage.study_lock``), so workers starting together never take one trial twice nor
queue too many.

A trial whose worker died (its heartbeat went stale) or was preempted (SIGTERM) is failed and queued
again with the same values, up to ``sweep.retries`` times; the retry resumes the first attempt's
``last.pt``. A retried trial is marked ``segtrack.retried`` and does not count towards N: the study
ends with N trials that count.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from segtrack import ConfigError, redact
from segtrack_optuna.heartbeat import Heartbeat
from segtrack_optuna.joins import base_terms, check_join, study_attrs
from segtrack_optuna.space import Dimension
from segtrack_optuna.storage import default_storage, open_storage, study_lock  # noqa: F401 (re-exported)

log = logging.getLogger("segtrack.sweep")
QUEUE_ATTR = "segtrack.trials"  # the number of trials the study holds (set once they are queued)
STUDY_ID_ATTR = "segtrack.study_id"  # shared by every worker: trackers group the study's runs by it
RETRY_OF = "segtrack.retry_of"  # on a retry: the number of the trial it repeats (the first attempt)
ATTEMPT = "segtrack.attempt"  # 0 for the first attempt
RETRIED = "segtrack.retried"  # on a failed attempt: the number of the trial that repeats it
JOIN_TIMEOUT_S = 60.0
WAIT_POLL_S = 2.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
        *,
        timeout_s: float = 0.0,
        enqueue: Sequence[Mapping[str, Any]] = (),
        force_join: bool = False,
    ):
        self.name, self.dimensions, self.section = name, list(dimensions), section
        self.url, self.limit, self.epochs_per_trial = storage, trials, epochs_per_trial
        self.timeout_s, self.to_enqueue, self.force_join = timeout_s, list(enqueue), force_join
        self.space: Mapping[str, Any] = {d.key: d.describe() for d in self.dimensions}
        self.study: Any = None
        self.storage: Any = None
        self.current: Any = None  # the optuna.Trial running now
        self.heartbeat: Heartbeat | None = None
        self.pruned = False
        self.epochs_seen = 0  # epochs the running trial trained (counted by the reporter)
        self.taken = 0
        self.started = time.monotonic()
        self._lock_depth = 0

    # -- TrialSource ----------------------------------------------------------------------------

    def candidate_values(self) -> dict[str, list[Any]]:
        return {d.key: d.candidates() for d in self.dimensions}

    def open(
        self,
        direction: str,
        *,
        objective: str = "",
        folds: int | None = None,
        base: Mapping[str, Any] | None = None,
    ) -> dict[str, str]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = open_storage(
            self.url, heartbeat_s=self.section["heartbeat_s"], stale_after_s=self.section["stale_after_s"]
        )
        wanted: Literal["maximize", "minimize"] = "maximize" if direction == "max" else "minimize"
        terms = base_terms(base or {}, set(self.space))
        mine = study_attrs(objective, direction, folds, terms)
        with self._lock():
            created = True
            try:
                self.study = optuna.create_study(
                    study_name=self.name,
                    storage=self.storage,
                    direction=wanted,
                    sampler=self._sampler(0),
                    pruner=self._pruner(),
                )
            except optuna.exceptions.DuplicatedStudyError:
                created = False
                # a joining process draws its own random numbers, or it would repeat the creator's trials
                self.study = optuna.load_study(
                    study_name=self.name,
                    storage=self.storage,
                    sampler=self._sampler(os.getpid()),
                    pruner=self._pruner(),
                )
            if created:
                for key, value in {**mine, STUDY_ID_ATTR: os.urandom(6).hex()}.items():
                    self.study.set_user_attr(key, value)
            else:
                self._check_joined(wanted, mine)
            queued = self._queue_trials(created)
        self.reap()
        log.info(
            "study %s in %s: %s, %d trials in all",
            self.name,
            redact(self.url),
            "created" if created else "joined",
            queued,
        )
        return {
            "study_id": str(self.study.user_attrs.get(STUDY_ID_ATTR, "")),
            "storage": redact(self.url),
            "sampler": self.section["sampler"],
            "pruner": self.section["pruner"],
            "seed": str(self.section["seed"]),
            "trials": str(queued),
            "direction": wanted,
            "joined": str(not created).lower(),
        }

    def next_trial(self) -> tuple[int, dict[str, Any], int | None] | None:
        """The next queued trial (number, values, and the number of the trial it retries, if it does).
        With none queued while other workers still run trials, waits: a trial of theirs may come back
        (preempted, or its worker died) and must still run."""
        waited = False
        while True:
            if self.taken >= self.limit or self._timed_out():
                return None
            self.reap()
            with self._lock():
                trial = self._take_queued()
            if trial is not None:
                break
            running = self._running_elsewhere()
            if not running:
                return None
            if not waited:
                print(
                    f"segtrack sweep: no trial queued; waiting for {running} trial(s) running in other workers (a "
                    f"preempted one, or one whose worker stops answering for {self.section['stale_after_s']} s, is "
                    "queued again and run here)",
                    flush=True,
                )
                waited = True
            time.sleep(WAIT_POLL_S)
        self.taken += 1
        self.current, self.pruned, self.epochs_seen = trial, False, 0
        params = {d.key: d.suggest(trial) for d in self.dimensions}
        trial.set_user_attr("segtrack.pid", os.getpid())
        trial.set_user_attr("segtrack.worker", worker_name())  # host:pid, named when the worker dies
        self.heartbeat = Heartbeat(self.storage, trial._trial_id, self.section["heartbeat_s"])
        retry_of = trial.user_attrs.get(RETRY_OF)
        return trial.number, params, (int(retry_of) if retry_of is not None else None)

    def finish(
        self,
        number: int,
        value: float | None,
        error: str | None,
        *,
        interrupted: bool = False,
        epochs: int | None = None,
        links: Mapping[str, str] | None = None,
    ) -> tuple[str, float | None]:
        import optuna
        from optuna.trial import TrialState

        trial = self.current
        assert trial is not None and trial.number == number
        self.current = None
        self._stop_heartbeat()
        trial.set_user_attr("segtrack.epochs", self.epochs_seen if epochs is None else epochs)
        for key, link in (links or {}).items():
            trial.set_user_attr(key, link)
        if error is not None:
            trial.set_user_attr("segtrack.error", error[:2000])
        try:
            if self.pruned:  # Optuna scores a pruned trial by its last reported value
                return "pruned", self.study.tell(trial, state=TrialState.PRUNED).value
            if interrupted or error is not None or value is None or not math.isfinite(value):
                with self._lock():  # queued again (while it still runs: its attributes can change), then failed
                    self._retry(self.storage.get_trial(trial._trial_id), preempted=interrupted)
                    self.study.tell(trial, state=TrialState.FAIL)
                return "failed", None
            return "completed", self.study.tell(trial, value).value
        except optuna.exceptions.UpdateFinishedTrialError:  # failed elsewhere: its heartbeat went stale
            return "failed", None

    def best(self) -> tuple[int, float, dict[str, Any]] | None:
        try:
            best = self.study.best_trial
        except ValueError:  # no completed trial yet
            return None
        return best.number, float(best.value), dict(best.params)

    def close(self) -> None:
        if self.current is not None:  # a trial that never reached finish(): not left RUNNING
            self.finish(self.current.number, None, "the worker stopped before the trial ended", interrupted=True)

    # -- pruning (called by the reporter plugin) ------------------------------------------------

    def report(self, value: float, step: int) -> bool:
        """Report one epoch's objective; True when the pruner says this trial should stop."""
        if self.current is None or not math.isfinite(value):
            return False
        self.current.report(value, step)
        if self.section["pruner"] != "none" and self.current.should_prune():
            self.pruned = True
        return self.pruned

    # -- dead workers and retries ---------------------------------------------------------------

    def reap(self) -> None:
        """Fail the trials whose worker stopped stamping them, each queued again first (all under
        the lock: two workers reaping at once must not queue one trial twice). Optuna's
        ``fail_stale_trials`` would fail them first, after which a trial's attributes are frozen:
        the reason and the retry's number could not be kept with it."""
        from optuna.trial import TrialState

        with self._lock():
            stale = self.storage._get_stale_trial_ids(self.study._study_id)  # RUNNING, heartbeat past the grace
            for trial_id in stale:
                frozen = self.storage.get_trial(trial_id)
                worker = frozen.user_attrs.get("segtrack.worker", "its worker")
                reason = (
                    f"worker {worker} stopped answering (no heartbeat for over {self.section['stale_after_s']} s): "
                    "it was killed or its machine was lost"
                )
                self.storage.set_trial_user_attr(trial_id, "segtrack.error", reason)
                retry = self._retry(frozen, preempted=True)
                self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
                again = f"queued again as trial {retry}" if retry is not None else "not retried (sweep.retries used up)"
                print(f"segtrack sweep: trial {frozen.number} failed: {reason}; {again}", flush=True)

    def _retry(self, frozen: Any, *, preempted: bool) -> int | None:
        """Queue the running trial ``frozen`` again with the same values when it has retries left
        (``sweep.retries`` for a preempted or killed worker, ``sweep.retries_failed`` for a trial
        that failed by itself) and mark it retried; returns the retry's number. The caller then
        fails it."""
        attempt = int(frozen.user_attrs.get(ATTEMPT, 0))
        allowed = self.section["retries"] if preempted else self.section["retries_failed"]
        if attempt >= allowed or RETRIED in frozen.user_attrs:
            return None
        first = int(frozen.user_attrs.get(RETRY_OF, frozen.number))
        with self._lock():
            self.study.enqueue_trial(
                dict(frozen.params), user_attrs={RETRY_OF: first, ATTEMPT: attempt + 1}, skip_if_exists=False
            )
            retry = max(t.number for t in self.study.get_trials(deepcopy=False))
            self.storage.set_trial_user_attr(frozen._trial_id, RETRIED, retry)
        return retry

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """The study's lock, re-entrant within this process (a stale trial is queued again from
        inside the reaping, which already holds it)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with study_lock(self.storage, self.url, self.name):
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0

    def _running_elsewhere(self) -> int:
        from optuna.trial import TrialState

        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        # a trial an older segtrack left RUNNING has no heartbeat, so it never goes stale: not waited for
        return sum("segtrack.worker" in t.user_attrs for t in running)

    def _timed_out(self) -> bool:
        if self.timeout_s and time.monotonic() - self.started > self.timeout_s:
            log.info("study %s: --timeout of %.0f s reached: no new trial starts here", self.name, self.timeout_s)
            return True
        return False

    def _stop_heartbeat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None

    # -- helpers --------------------------------------------------------------------------------

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

    def _check_joined(self, wanted: str, mine: Mapping[str, Any]) -> None:
        have = self.study.direction.name.lower()
        if have != wanted:
            raise ConfigError(
                f"study {self.name!r} already exists to {have} its objective, not to {wanted}: use another --study "
                "or set checkpoint.mode to match it"
            )
        recorded = self.study.user_attrs.get("segtrack.space")
        if recorded is not None and json.loads(recorded) != json.loads(json.dumps(self.space)):
            raise ConfigError(
                f"study {self.name!r} already exists with another search space ({redact(recorded)}): use another "
                "--study or the same [sweep.space]"
            )
        for line in check_join(self.name, self.study.user_attrs, mine, force=self.force_join):
            log.warning("study %s: --force-join: this worker's base settings differ: %s", self.name, line)

    def _queue_trials(self, created: bool) -> int:
        """The creator queues the study's trials; a joiner waits for the queue, and a joiner asking
        for more trials than the study has queues the difference (under the lock: exactly once).
        Trials given with --enqueue come on top. Returns the study's number of trials."""
        wanted = self._grid_capped(self.limit)
        if created:
            self.study.set_user_attr("segtrack.space", json.dumps(self.space))
            total = 0
        else:
            self._wait_for_queue()
            total = self._counted()
        for point in self._grid_points(wanted)[total:]:
            self.study.enqueue_trial(point, skip_if_exists=False)
        for given in self.to_enqueue:
            self.study.enqueue_trial(dict(given), user_attrs={"segtrack.enqueued": True}, skip_if_exists=False)
        total = max(wanted, total) + len(self.to_enqueue)
        self.study.set_user_attr(QUEUE_ATTR, total)
        self.limit += len(self.to_enqueue)
        return total

    def _wait_for_queue(self) -> None:
        """A study created by a process that has not yet queued its trials: wait (it holds the lock
        meanwhile on most storages, so this rarely waits at all)."""
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while QUEUE_ATTR not in self.study.user_attrs:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"study {self.name!r} exists but its trials were never queued (the process that created it "
                    "stopped early): use another --study name"
                )
            time.sleep(0.5)

    def _counted(self) -> int:
        """Trials that count towards the study's N: all but the attempts that were queued again."""
        return sum(RETRIED not in t.user_attrs for t in self.study.get_trials(deepcopy=False))

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
        """A queued trial (WAITING -> RUNNING), oldest first; None when the queue is empty. Called
        under the study's lock: on SQLite, which ignores row locks, the lock is what makes it atomic."""
        import optuna
        from optuna.trial import TrialState

        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            try:
                if self.storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                    return optuna.Trial(self.study, frozen._trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None
