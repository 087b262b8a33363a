"""The ``analytics`` plugin: `segtrack runs ...` commands, and in the loop a finished fit's rank
and the experiment's cross-fold summary."""

from __future__ import annotations

import logging
import sys

from segtrack import hookimpl

log = logging.getLogger("segtrack.analytics")


class AnalyticsPlugin:
    def __init__(self):
        self.settings = None
        self.section: dict = {}

    @hookimpl
    def settings_loaded(self, settings):
        from segtrack_analytics.settings import analytics_section

        self.settings = settings
        self.section = analytics_section(settings)

    @hookimpl
    def cli_commands(self, subparsers):
        from segtrack_analytics.cli import add_commands

        add_commands(subparsers)

    def _analytics(self):
        from segtrack_analytics.analytics import RunAnalytics
        from segtrack_analytics.settings import default_experiment

        analytics = RunAnalytics(None, self.settings, cache_dir=self.section["cache_dir"])
        analytics.load_experiment_runs(default_experiment(self.settings))
        return analytics

    # trylast: read the store after the tracking plugin's own fit_end has flushed this run
    @hookimpl(trylast=True)
    def fit_end(self, run, result):
        if not self.section.get("rank_at_fit_end") or result.best_epoch < 0 or run.fold is not None:
            return
        analytics = self._analytics()
        mode = run.config["checkpoint"]["mode"]
        metric = f"best_{result.monitor}"
        if f"metrics.{metric}" not in analytics.columns:
            return  # nothing tracked this metric (no tracking plugin, or it could not ship yet)
        rank, total = analytics.rank_of(metric, result.best_value, mode)
        sys.stderr.write(f"analytics: this run ranks {rank} of {total} in the experiment on {metric} "
                         f"({result.best_value:.4f}; `segtrack runs top --metric {metric}` lists the best)\n")

    @hookimpl(trylast=True)
    def cross_validation_end(self, result):
        if not self.section.get("summary_at_cv_end"):
            return
        from segtrack_analytics.render import render

        analytics = self._analytics()
        metric = "best_val_dice" if "metrics.best_val_dice" in analytics.columns else None
        if metric is None:
            return
        sys.stderr.write("analytics: cross-fold summary of the experiment on best_val_dice\n"
                         + render(analytics.cross_fold_summary(metric)) + "\n")
