"""A study: trials that each fit (or cross-validate) the base settings with a few keys changed.

Which values a trial gets, when the study is done and which trial is pruned belong to a searching
plugin (segtrack-optuna), handed in as a ``TrialSource``; this module runs the trials through the
trainer and fires ``study_start``, ``trial_end`` and ``study_end``, so tracking plugins can nest a
study's runs without knowing who searched.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from segtrack.config.settings import read_settings, resolve_settings
from segtrack.errors import ConfigError, PeerLost
from segtrack.loop.run_info import cross_validated, recorded_config
from segtrack.loop.trainer import SegmentationTrainer
from segtrack.plugins.manager import PluginManager, get_plugin_manager, register_code_plugins
from segtrack.plugins.records import (
    CrossValidationResult,
    FitResult,
    StudyInfo,
    StudyResult,
    TrialResult,
    freeze,
    thaw,
)
from segtrack.runtime.distributed import context_from_env

log = logging.getLogger("segtrack.study")
EXPORT_CHOICES = ("best", "all", "none")
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_study_name(name: Any) -> None:
    """A study's name becomes folder names and tracker run names: letters, digits, ``.``, ``_``, ``-``."""
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name):
        raise ConfigError(
            f"study name {name!r} is not allowed: use up to 100 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (it names the trials' folders and runs)"
        )


class TrialSource(Protocol):
    """What a searching plugin hands ``run_study``: the values to try and the verdicts."""

    space: Mapping[str, Any]  # setting key -> its range, as the plugin describes it (for records)

    def candidate_values(self) -> Mapping[str, Sequence[Any]]:
        """Per setting key, the values that bound its range (ends, every choice): each is checked
        against the settings schema before the study is opened."""
        ...

    def open(self, direction: str) -> Mapping[str, str]:
        """Create or join the study (``direction`` "max" or "min"); returns attributes to record. An
        ``open`` that also takes the keywords ``objective`` (``checkpoint.monitor``), ``folds`` and
        ``base`` (the base settings, secrets masked) gets them, to refuse a worker that joins a study
        it does not share. An attribute ``study_id`` names the study for every worker that joins it."""
        ...

    def next_trial(self) -> tuple[int, Mapping[str, Any]] | tuple[int, Mapping[str, Any], int | None] | None:
        """The next trial's number and values (setting key -> value), or None: nothing left to run. A
        third item, when not None, is the number of an earlier trial this one runs again (its worker
        was preempted or died): the trial then resumes that trial's ``last.pt`` in its folder."""
        ...

    def finish(self, number: int, value: float | None, error: str | None) -> tuple[str, float | None]:
        """Record a trial's end; returns its state ("completed", "pruned" or "failed") and the value
        the study records for it (a search library may score a pruned trial by its last report). A
        ``finish`` that also takes the keywords ``interrupted`` (the worker was stopped: SIGTERM,
        Ctrl-C), ``epochs`` (trained) and ``links`` (what plugins' ``trial_links`` returned) gets them."""
        ...

    def best(self) -> tuple[int, float, Mapping[str, Any]] | None:
        """The study's best trial so far (number, value, params), across every process."""
        ...

    def close(self) -> None: ...


def run_study(
    source: TrialSource,
    *,
    study_name: str,
    settings: Any = None,
    folds: int | None = None,
    export: str = "best",
    plugins: Iterable[Any] = (),
    plugin_manager: PluginManager | None = None,
) -> StudyResult:
    """Run the trials ``source`` hands out until it has none left, one fit each (a ``folds``-fold
    cross-validation with ``folds``), and return what this process ran.

    A trial's checkpoints go to ``<checkpoint.dir>/<study_name>/trial-<n>/``, its ONNX export to
    ``<export.dir>/<study_name>/``: with ``export="best"`` only a fit whose best value beats every
    trial finished before it is exported (so the study's best trial always has one), ``"all"``
    exports every fit, ``"none"`` none. A trial that fails is recorded as failed and the study
    goes on; Ctrl-C ends the current trial (recorded as failed), fires ``study_end`` and propagates.
    ``plugins`` are registered for the whole study (e.g. the searching plugin's pruning reporter).
    """
    if export not in EXPORT_CHOICES:
        raise ConfigError(f"export = {export!r} is not allowed: use one of {', '.join(EXPORT_CHOICES)}")
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise ConfigError(f"folds = {folds!r} is not allowed: a cross-validated trial needs at least 2 folds")
    check_study_name(study_name)
    if context_from_env().enabled:
        raise ConfigError(
            "a study runs its trials one process each, not under torchrun: start one `segtrack sweep` per "
            "machine or GPU on the same study (they share its trials) instead"
        )
    settings = read_settings() if settings is None else settings
    manager = plugin_manager or get_plugin_manager(settings)
    register_code_plugins(manager, plugins)
    resolved = resolve_settings(settings, manager)
    base = thaw(resolved)
    check_space(base, source.candidate_values(), manager)
    manager.call_all_ranks("settings_loaded", settings=resolved)  # before study_start: plugins read their sections
    runner = _StudyRunner(source, study_name, base, folds, export, manager)
    return runner.run()


class _StudyRunner:
    def __init__(
        self, source: TrialSource, name: str, base: dict, folds: int | None, export: str, manager: PluginManager
    ):
        self.source, self.name, self.base, self.folds, self.export = source, name, base, folds, export
        self.hooks = manager
        self.study_id = uuid.uuid4().hex[:12]
        self.monitor = base["checkpoint"]["monitor"]
        self.direction = base["checkpoint"]["mode"]

    def run(self) -> StudyResult:
        offered = {"objective": self.monitor, "folds": self.folds, "base": recorded_config(self.base)}
        attributes = dict(self.source.open(self.direction, **_accepted(self.source.open, offered)))
        self.study_id = attributes.pop("study_id", "") or self.study_id  # one id for every worker of the study
        info = StudyInfo(
            study_name=self.name,
            study_id=self.study_id,
            config=freeze(cross_validated(recorded_config(self.base), self.folds)),  # as the trials run
            space=freeze(thaw(self.source.space)),
            attributes=freeze(attributes),
            objective=self.monitor,
            direction=self.direction,
            folds=self.folds,
            run_name=self.base["run"]["name"],
        )
        self.hooks.call("study_start", study=info)
        trials: list[TrialResult] = []
        status = "interrupted"
        try:
            while (ticket := self.source.next_trial()) is not None:
                number, params, *again = ticket
                trials.append(self._trial(number, params, again[0] if again else None))
            status = "completed"
        finally:
            best = self._best()
            result = StudyResult(
                study_name=self.name,
                study_id=self.study_id,
                status=status,
                trials=tuple(trials),
                best_number=best[0] if best else None,
                best_value=best[1] if best else None,
                best_params=freeze(dict(best[2])) if best else freeze({}),
            )
            self.hooks.call("study_end", result=result)
            self.source.close()
        return result

    def _trial(self, number: int, params: Mapping[str, Any], retry_of: int | None = None) -> TrialResult:
        """One trial: a trainer for its settings, a fit or CV, the verdict, ``trial_end``. A retry
        runs in the folder of the trial it repeats and resumes its ``last.pt`` (a fit; a CV starts over)."""
        started = time.perf_counter()
        fit: FitResult | None = None
        cv: CrossValidationResult | None = None
        error: str | None = None
        trainer: SegmentationTrainer | None = None
        home = number if retry_of is None else retry_of
        if retry_of is not None:
            log.info("study %s: trial %d runs trial %d again (its worker stopped)", self.name, number, retry_of)
        try:
            trainer = SegmentationTrainer(self._trial_settings(home, params), plugin_manager=self.hooks)
            trainer._trial = (self.study_id, number)
            if self.export == "best":
                trainer._export_wanted = self._beats_best
            if self.folds:
                cv = trainer.cv(self.folds)
            else:
                fit = trainer.fit(resume="auto" if retry_of is not None else None)
        except (KeyboardInterrupt, PeerLost) as exc:
            trained = trainer.epochs_trained if trainer is not None else 0
            why = f"interrupted ({exc})" if str(exc) else "interrupted"
            self._end_trial(number, params, None, why, fit, cv, started, trained, retry_of, interrupted=True)
            raise
        except Exception as exc:  # a failed trial is recorded; the study goes on
            error = _one_sentence(exc)
            log.warning("study %s: trial %d failed (%s); the study goes on", self.name, number, error)
        value = _objective(fit, cv, self.monitor)
        if error is None:
            error = _failure_of(fit, cv)
        trained = trainer.epochs_trained if trainer is not None else 0
        return self._end_trial(number, params, value, error, fit, cv, started, trained, retry_of)

    def _end_trial(
        self,
        number: int,
        params: Mapping[str, Any],
        value: float | None,
        error: str | None,
        fit: FitResult | None,
        cv: CrossValidationResult | None,
        started: float,
        epochs: int,
        retry_of: int | None = None,
        interrupted: bool = False,
    ) -> TrialResult:
        links = {
            k: str(v)
            for found in self.hooks.collect("trial_links", study_id=self.study_id, number=number).values()
            for k, v in dict(found).items()
        }
        offered = {"interrupted": interrupted, "epochs": epochs, "links": links}
        state, value = self.source.finish(
            number, value if error is None else None, error, **_accepted(self.source.finish, offered)
        )
        best = self._best()
        result = TrialResult(
            study_name=self.name,
            study_id=self.study_id,
            number=number,
            params=freeze(dict(params)),
            state=state,
            value=value,
            epochs=epochs,
            error=error,
            fit=fit,
            cross_validation=cv,
            best_number=best[0] if best else None,
            best_value=best[1] if best else None,
            duration_s=time.perf_counter() - started,
            retry_of=retry_of,
            interrupted=interrupted,
        )
        self.hooks.call("trial_end", trial=result)
        return result

    def _trial_settings(self, number: int, params: Mapping[str, Any]) -> dict[str, Any]:
        config = thaw(freeze(self.base))
        for key, value in params.items():
            _set_dotted(config, key, value)
        config["checkpoint"]["dir"] = str(Path(self.base["checkpoint"]["dir"]) / self.name / f"trial-{number}")
        config["export"]["dir"] = str(Path(self.base["export"]["dir"]) / self.name)
        config["run"]["name"] = f"{self.name}-trial-{number}"
        if self.export == "none":
            config["export"]["enabled"] = False
        return config

    def _best(self) -> tuple[int, float, Mapping[str, Any]] | None:
        try:
            return self.source.best()
        except Exception as exc:  # the storage may be briefly unreachable; the trial is recorded regardless
            log.warning("study %s: could not read the best trial (%s)", self.name, exc)
            return None

    def _beats_best(self, value: float) -> bool:
        best = self._best()
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best[1] if self.direction == "max" else value < best[1]


def _accepted(method: Any, offered: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of ``offered`` that ``method`` takes (a TrialSource written for an older segtrack
    takes none of them)."""
    parameters = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(offered)
    return {k: v for k, v in offered.items() if k in parameters}


def _one_sentence(exc: BaseException) -> str:
    """``Type: message`` on one line, the whole message (a multi-line error's lines joined)."""
    lines = [line.strip(" -") for line in str(exc).strip().splitlines() if line.strip(" -")]
    return f"{type(exc).__name__}: {' '.join(lines)}" if lines else type(exc).__name__


def _objective(fit: FitResult | None, cv: CrossValidationResult | None, monitor: str) -> float | None:
    if fit is not None:
        value = fit.best_value
    elif cv is not None and monitor in cv.summary:
        value = cv.summary[monitor]["mean"]
    else:
        return None
    return float(value) if math.isfinite(value) else None


def _failure_of(fit: FitResult | None, cv: CrossValidationResult | None) -> str | None:
    """A fit that ended without raising may still have failed (or never scored)."""
    fits = cv.folds if cv is not None else ((fit,) if fit is not None else ())
    for result in fits:
        if result.status in ("failed", "interrupted"):
            return result.error or result.status
    if fits and all(result.best_epoch < 0 for result in fits):
        return "no epoch was scored"
    return None


def _set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def _dotted_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for name, value in config.items():
        key = f"{prefix}{name}"
        keys.append(key)
        if isinstance(value, Mapping):
            keys += _dotted_keys(value, f"{key}.")
    return keys


def check_space(base: Mapping[str, Any], candidates: Mapping[str, Sequence[Any]], manager: PluginManager) -> None:
    """Every key of a search space names a setting, and every value that bounds its range is one
    that setting accepts; raises one ``ConfigError`` listing each problem."""
    known = _dotted_keys(base)
    problems = []
    for key, values in candidates.items():
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        free_form = parent in known and isinstance(_get_dotted(base, parent), Mapping) and parent.count(".") >= 1
        if key not in known and not free_form:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{key!r} is not a setting{hint}")
            continue
        for value in values:
            trial = thaw(freeze(dict(base)))
            _set_dotted(trial, key, value)
            try:
                resolve_settings(trial, manager)
            except ConfigError as exc:
                problems.append(f"{key!r} = {value!r} is refused: {_first_problem(exc)}")
                break
    if problems:
        raise ConfigError("search space: " + "; ".join(problems) + " (fix [sweep.space]; nothing was run)")


def _get_dotted(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def _first_problem(exc: ConfigError) -> str:
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    return lines[-1] if len(lines) > 1 else (lines[0] if lines else "refused")
