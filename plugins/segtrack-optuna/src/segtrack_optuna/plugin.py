"""The ``sweep`` plugin: declares ``[sweep]`` (``settings_schema``), adds ``segtrack sweep``
(``cli_commands``), and, while a study runs, reports each epoch's objective to Optuna and prunes
through ``trainer.request_stop`` (``TrialReporter``)."""

from __future__ import annotations

import sys
from typing import Any

from segtrack import hookimpl, redact
from segtrack_optuna.settings import SCHEMA


class SweepPlugin:
    @hookimpl
    def settings_schema(self):
        return SCHEMA

    @hookimpl
    def cli_commands(self, subparsers):
        sweep = subparsers.add_parser(
            "sweep",
            help="hyperparameter search on an Optuna study: one fit (or CV) per trial",
            description="Run trials of the study NAME: each fits the settings with the [sweep.space] values an "
            "Optuna sampler picks. Several processes (any machine) may run the same study on a shared storage.",
        )
        sweep.add_argument("--study", metavar="NAME", help="study name (default: sweep.study)")
        sweep.add_argument("--trials", type=int, metavar="N", help="trials in the study (default: sweep.trials)")
        sweep.add_argument("--storage", metavar="URL", help="Optuna RDB URL (default: sqlite:///optuna.db here)")
        sweep.add_argument("--folds", type=int, metavar="K", help="cross-validate each trial over K folds")
        sweep.add_argument(
            "--timeout", type=float, metavar="SECONDS", help="start no new trial after this (default: sweep.timeout_s)"
        )
        sweep.add_argument(
            "--enqueue",
            nargs="+",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="queue one trial with these values of searched keys (repeat --enqueue for more trials)",
        )
        sweep.add_argument(
            "--force-join",
            action="store_true",
            help="join a study whose base settings differ from these (each difference is warned)",
        )
        sweep.set_defaults(handler=_sweep)


class TrialReporter:
    """Hooks for the length of one study: each epoch's objective goes to the running Optuna trial;
    when the pruner says so, the fit (and a CV's remaining folds) stops after this epoch.

    It reports at ``epoch_end``, not ``validation_end``: only ``epoch_end`` carries every metric,
    plugin metrics included, and the objective may be one of those."""

    def __init__(self, trials: Any):
        self.trials = trials
        self._offset = 0

    @hookimpl
    def fit_start(self, trainer, run):
        self._offset = (run.fold or 0) * trainer.settings["train"]["epochs"]

    @hookimpl
    def epoch_end(self, trainer, epoch):
        self.trials.epochs_seen += 1
        value = epoch.metrics.get(epoch.monitor)
        if value is None:
            return
        if self.trials.report(float(value), self._offset + epoch.epoch):
            trainer.request_stop(
                f"pruned by the {self.trials.section['pruner']} pruner after epoch {epoch.epoch + 1}", all_folds=True
            )

    @hookimpl
    def trial_end(self, trial):
        value = "-" if trial.value is None else f"{trial.value:.4g}"
        best = "" if trial.best_number is None else f"; best so far: trial {trial.best_number} ({trial.best_value:.4g})"
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        why = f" ({trial.error})" if trial.error and trial.state == "failed" else ""
        print(
            f"segtrack sweep: trial {trial.number} {trial.state}{why}: value {value} after {trial.epochs} epoch(s) "
            f"[{params}]{best}",
            file=sys.stderr,
            flush=True,
        )


def _short(value: Any) -> str:
    """A sampled value for the console: 4 significant digits, a URL's password masked."""
    return f"{value:.4g}" if isinstance(value, float) else redact(str(value))


def _sweep(args, settings) -> int:
    from segtrack_optuna.api import sweep

    result = sweep(
        settings,
        study=args.study,
        trials=args.trials,
        storage=args.storage,
        folds=args.folds,
        timeout=args.timeout,
        enqueue=args.enqueue,
        force_join=args.force_join,
        plugin_manager=args.plugin_manager,
    )
    counts = {state: sum(t.state == state for t in result.trials) for state in ("completed", "pruned", "failed")}
    print(
        f"study {result.study_name}: this process ran {len(result.trials)} trial(s): "
        + ", ".join(f"{n} {state}" for state, n in counts.items())
    )
    if result.best_number is not None:
        params = ", ".join(f"{k}={_short(v)}" for k, v in result.best_params.items())
        monitor = settings["checkpoint"]["monitor"]
        print(f"best trial: {result.best_number} with {monitor} = {result.best_value:.6g} ({params})")
    else:
        print("no trial completed yet")
    return 0 if not result.trials or counts["completed"] + counts["pruned"] > 0 else 1
