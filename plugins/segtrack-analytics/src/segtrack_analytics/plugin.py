"""The ``analytics`` plugin: `segtrack runs ...` commands, and in the loop a finished fit's rank in
its experiment, a finished cross-validation's fold summary, and a finished trial's rank in its study."""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

from segtrack import ConfigError, hookimpl

log = logging.getLogger("segtrack.analytics")
TRACKING_WAIT_S = 10.0


class AnalyticsPlugin:
    def __init__(self):
        self.settings = None
        self.section: dict = {}
        self.studies: dict[str, Any] = {}  # study id -> StudyInfo, from study_start
        self.trial_cvs: set[str] = set()  # cv ids of cross-validations that are trials of a study
        self.trial_recorded = False  # the last trial fit's runs go to a store (the mlflow plugin ran with it)

    @hookimpl
    def settings_schema(self):
        from segtrack_analytics.settings import SCHEMA

        return SCHEMA

    @hookimpl
    def settings_loaded(self, settings):
        from segtrack import thaw
        from segtrack_analytics.settings import analytics_section

        self.settings = settings
        # checked and filled in by segtrack with this plugin's schema; analytics_section() only if that failed
        self.section = thaw(settings["analytics"]) if "analytics" in settings else analytics_section(settings)

    @hookimpl
    def cli_commands(self, subparsers):
        from segtrack_analytics.cli import add_commands

        add_commands(subparsers)

    def _analytics(self, purpose: str, command: str, wait: bool = True):
        """The experiment's runs, or None when the store cannot be read: one warning line then, never
        a plugin failure (an unreachable store is not a bug of this plugin, and the fit succeeded)."""
        from segtrack_analytics.analytics import RunAnalytics
        from segtrack_analytics.errors import NoStore, StoreUnreachable
        from segtrack_analytics.settings import default_experiment

        if wait:
            self._wait_for_tracking()
        try:
            analytics = RunAnalytics(None, self.settings, cache_dir=self.section["cache_dir"])
            analytics.load_experiment_runs(default_experiment(self.settings))
        except NoStore:
            return None  # no tracking plugin wrote a store: nothing to compare with
        except StoreUnreachable as exc:
            log.warning("analytics: cannot %s: %s; `%s` works once the store is back", purpose, exc.reason, command)
            return None
        except ConfigError as exc:
            log.warning("analytics: cannot %s: %s", purpose, exc)
            return None
        return analytics

    def _quick_rank(self, metric: str, value: float, mode: str, fit_id: str | None) -> tuple[int, int] | None:
        """The rank straight from a local SQLite store (None: another store, or it could not say)."""
        from segtrack_analytics.quick_rank import rank_in_sqlite_store
        from segtrack_analytics.settings import default_experiment

        uri = self._tracking_uri()
        if uri is None:
            return None
        return rank_in_sqlite_store(uri, default_experiment(self.settings), metric, value, mode, fit_id)

    def _tracking_uri(self) -> str | None:
        """The tracking URI, made absolute (a local SQLite store is then read directly); None: unknown."""
        from segtrack_mlflow.uri import absolute_uri, resolve_tracking_uri

        try:
            return absolute_uri(resolve_tracking_uri(None, self.settings))
        except ConfigError:
            return None

    def _wait_for_tracking(self) -> None:
        """The mlflow plugin's fit returns before its shipper has sent the run: give the shipper a
        few seconds, so the ranking and summary include this fit's runs (without them it still
        answers, over the runs already stored)."""
        import segtrack_mlflow

        spool_dir = (self.settings.get("mlflow") or {}).get("spool_dir") or ".segtrack/spool"
        if not segtrack_mlflow.wait_sent(spool_dir, TRACKING_WAIT_S):
            log.info("analytics: this fit's runs are still being sent; comparing with the runs already stored")

    # trylast: read the store after the tracking plugin's own fit_end has spooled this run
    @hookimpl(trylast=True)
    def fit_end(self, run, result):
        if run.study_id is not None:  # a trial of a study: trial_end says its rank in the study instead
            self.trial_recorded = "mlflow" in {name for name, _ in run.plugins}
            return
        if not self.section.get("rank_at_fit_end") or result.best_epoch < 0 or run.fold is not None:
            return  # a fold: cross_validation_end summarises the folds
        metric = f"best_{result.monitor}"
        # no wait for the tracker to send this fit (waiting cost a short fit seconds): its value is
        # known here, and its stored row, when already sent, is told apart by its fit_id
        recorded = "mlflow" in {name for name, _ in run.plugins}  # else the store never holds this fit
        own = run.fit_id if recorded else None  # this fit's value is counted once, as its own
        mode = run.config["checkpoint"]["mode"]
        ranked = self._quick_rank(metric, result.best_value, mode, own)
        if ranked is None:
            analytics = self._analytics("rank this run", f"segtrack runs top --metric {metric}", wait=False)
            if analytics is None:
                return
            if f"metrics.{metric}" in analytics.columns:
                ranked = analytics.rank_of(metric, result.best_value, mode, own)
            else:
                ranked = (1, int(recorded))  # this fit is the first to record the metric (or none is)
        rank, total = ranked
        if total == 0:
            return  # nothing to compare with
        sys.stderr.write(
            f"analytics: this run ranks {rank} of {total} in the experiment on {metric} "
            f"({result.best_value:.4f}; `segtrack runs top --metric {metric}` lists the best)\n"
        )

    @hookimpl
    def cross_validation_start(self, info):
        if info.study_id is not None:
            self.trial_cvs.add(info.cv_id)

    @hookimpl(trylast=True)
    def cross_validation_end(self, result):
        if result.cv_id in self.trial_cvs:
            self.trial_cvs.discard(result.cv_id)
            return  # a trial of a study: trial_end says its rank in the study
        if not self.section.get("summary_at_cv_end"):
            return
        from segtrack_analytics.render import render

        # on the fit's own monitor (checkpoint.monitor); this CV only, as the store holds it
        monitor = next((f.monitor for f in result.folds), "val_dice")
        metric, mode = f"best_{monitor}", self.settings["checkpoint"]["mode"]
        command = f"segtrack runs summary --metric {metric}"
        analytics = self._analytics("summarise this cross-validation", command)
        if analytics is None or f"metrics.{metric}" not in analytics.columns:
            return
        summary = analytics.cross_fold_summary(metric, mode=mode, cv_id=result.cv_id)
        if summary.num_rows == 0:
            sys.stderr.write(
                f"analytics: this cross-validation's runs are not in the store yet; `{command}` shows it once sent\n"
            )
            return
        sys.stderr.write(
            f"analytics: cross-fold summary of this cross-validation on {metric} "
            f"(`{command}` lists every one of the experiment)\n" + render(summary) + "\n"
        )

    @hookimpl
    def study_start(self, study):
        self.studies[study.study_id] = study

    @hookimpl(trylast=True)
    def trial_end(self, trial):
        """The trial's rank among the study's trials that have a value, as `segtrack runs sweep` ranks them."""
        recorded, self.trial_recorded = self.trial_recorded, False
        if not self.section.get("rank_at_fit_end") or not recorded:
            return  # the store never holds this study's trials
        if trial.value is None or not math.isfinite(trial.value):
            return  # a failed trial has no value to rank
        study = self.studies.get(trial.study_id)
        objective = study.objective if study else self.settings["checkpoint"]["monitor"]
        mode = study.direction if study else self.settings["checkpoint"]["mode"]
        ranked = self._study_rank(trial, mode)
        if ranked is None:
            return
        rank, total = ranked
        pruned = ", pruned" if trial.state == "pruned" else ""
        sys.stderr.write(
            f"analytics: trial {trial.number} ranks {rank} of {total} in study {trial.study_name} on {objective} "
            f"({trial.value:.4g}{pruned}; `segtrack runs sweep --study {trial.study_name}` lists the trials)\n"
        )

    def _study_rank(self, trial, mode: str) -> tuple[int, int] | None:
        """From a local SQLite store in one query, else from the full load (None: no store to read).
        No wait for the tracker to send this trial: its value is known here and its stored run is
        told apart by its number."""
        from segtrack_analytics.quick_rank import study_rank_in_sqlite_store
        from segtrack_analytics.settings import default_experiment

        uri = self._tracking_uri()
        experiment = default_experiment(self.settings)
        number, value = trial.number, trial.value
        ranked = study_rank_in_sqlite_store(uri, experiment, trial.study_id, number, value, mode) if uri else None
        if ranked is None:
            command = f"segtrack runs sweep --study {trial.study_name}"
            analytics = self._analytics("rank this trial", command, wait=False)
            if analytics is None:
                return None
            ranked = analytics.rank_in_study(trial.study_id, number, value, mode)
        return ranked
