"""``segtrack runs list|query|summary|top|plot``: the experiment's runs, from DuckDB."""

from __future__ import annotations

import sys
from pathlib import Path

from segtrack import ConfigError, redact
from segtrack_analytics.render import FORMATS

SHOWN = 10  # experiments named when the chosen one has no runs


def add_commands(subparsers) -> None:
    runs = subparsers.add_parser("runs", help="query tracked runs with DuckDB (list, query, summary, top, plot)")
    commands = runs.add_subparsers(dest="runs_command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, handler):
        parser = commands.add_parser(name, help=help_text)
        parser.add_argument(
            "--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, settings, sqlite:///mlflow.db)"
        )
        parser.add_argument("--experiment", help="experiment name (default: from settings); 'all' for every one")
        parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
        parser.add_argument("--full-refresh", action="store_true", help="ignore the Parquet cache and read everything")
        parser.set_defaults(handler=handler)
        return parser

    listing = command("list", "one line per run", _list)
    listing.add_argument("-n", "--limit", type=int, default=20, help="newest N runs (default 20)")
    query = command("query", "run SQL over the tables runs and metrics", _query)
    query.add_argument("sql", help='e.g. "SELECT run_name, \\"metrics.val_dice\\" FROM runs"')
    summary = command(
        "summary",
        "per cross-validation: mean/std/min/max of a metric over its folds; then per study: its trials",
        _summary,
    )
    summary.description = (
        "One row per cross-validation (its fold runs' mean, std, min and max of --metric), then, in a table "
        "of its own, one row per study of `segtrack sweep` (trials by state, the best completed trial and its "
        "value): a study's trials are not folds and are never averaged. --format csv/json print one table: "
        "the cross-validations, or with --studies the studies."
    )
    summary.add_argument("--metric", help="e.g. val_dice or best_val_dice (not needed with --studies)")
    summary.add_argument(
        "--by", nargs="+", metavar="COLUMN", help="group runs by these columns instead of by CV parent"
    )
    summary.add_argument("--mode", choices=("max", "min"), default="max", help="best first: highest or lowest mean")
    summary.add_argument("--studies", action="store_true", help="only the studies' table")
    top = command("top", "the best runs by a metric", _top)
    top.add_argument("--metric", required=True)
    top.add_argument("-n", type=int, default=5)
    top.add_argument("--mode", choices=("max", "min"), default="max")
    plot = command("plot", "learning curves of a metric (or a study's trials) as a PNG", _plot)
    plot.add_argument("--metric", help="the metric whose learning curves to draw")
    plot.add_argument("--study", metavar="NAME", help="draw a study's objective per trial and per setting instead")
    plot.add_argument("--storage", metavar="URL", help="with --study: its Optuna storage (default: as segtrack sweep)")
    plot.add_argument(
        "--out", help="image file to write (.png, .svg or .pdf; default learning-curves.png or study-NAME.png)"
    )
    sweep = commands.add_parser("sweep", help="a study's trials ranked by its objective (segtrack sweep)")
    sweep.add_argument("--study", required=True, metavar="NAME", help="the study's name")
    sweep.add_argument(
        "--storage", metavar="URL", help="its Optuna storage (default: sweep.storage, else sqlite:///optuna.db)"
    )
    sweep.add_argument("--format", choices=FORMATS, default="table", help="output format")
    sweep.set_defaults(handler=_sweep)


def _load(args, settings):
    from segtrack_analytics.analytics import RunAnalytics
    from segtrack_analytics.settings import analytics_section, default_experiment

    section = analytics_section(settings)
    analytics = RunAnalytics(args.tracking_uri, settings, cache_dir=section["cache_dir"])
    experiment = args.experiment or default_experiment(settings)
    stats = analytics.load_experiment_runs(None if experiment == "all" else experiment, full=args.full_refresh)
    if stats.runs == 0:
        analytics.wait_for_cache()
        raise ConfigError(_no_runs(analytics, experiment))
    return analytics


def _no_runs(analytics, experiment: str) -> str:
    """Which experiments do hold runs (the ten largest), and how to pick one."""
    store = redact(analytics.tracking_uri)
    counts = analytics.experiment_run_counts()
    if not counts:
        return f"no runs at {store} yet: train first, or pass the --tracking-uri of a store with runs"
    found = ", ".join(f"{name!r} ({n} run{'s' if n != 1 else ''})" for name, n in list(counts.items())[:SHOWN])
    more = f" and {len(counts) - SHOWN} more" if len(counts) > SHOWN else ""
    return (
        f"no runs in experiment {experiment!r} at {store}, which has {found}{more}: "
        f"choose one with --experiment NAME (or --experiment all)"
    )


def _print(table, args) -> None:
    from segtrack_analytics.render import render

    print(render(table, args.format))


def _list(args, settings):
    analytics = _load(args, settings)
    metrics = [c for c in analytics.columns if c in ("metrics.best_val_dice", "metrics.val_dice", "metrics.val_loss")]
    columns = ", ".join(["run_id", "run_name", "status", "start_time", *[f'"{c}"' for c in metrics]])
    _print(analytics.query(f"SELECT {columns} FROM runs ORDER BY start_time DESC LIMIT {max(1, args.limit)}"), args)
    analytics.wait_for_cache()  # the answer first; the command ends with the cache write


def _query(args, settings):
    analytics = _load(args, settings)
    _print(analytics.query(args.sql), args)
    analytics.wait_for_cache()


def _summary(args, settings):
    if args.studies and args.by:
        raise ConfigError("--by groups runs by columns, --studies summarises studies: give one of them")
    if not args.studies and not args.metric:
        raise ConfigError("give --metric NAME (e.g. best_val_dice), or --studies for the studies alone")
    analytics = _load(args, settings)
    if args.studies:
        _print(analytics.study_summary(), args)
    else:
        folds = analytics.cross_fold_summary(args.metric, args.by, mode=args.mode)
        studies = analytics.study_summary() if not args.by else None
        if studies is None or studies.num_rows == 0:
            _print(folds, args)
        elif args.format == "table":
            print(f"cross-validations: {args.metric} over each one's folds")
            _print(folds, args)
            print("\nstudies: trials of `segtrack sweep` by state, the best completed one by the study's value")
            _print(studies, args)
        else:  # one table per csv or json document
            _print(folds, args)
            n = studies.num_rows
            print(
                f"({n} stud{'y' if n == 1 else 'ies'} too: `segtrack runs summary --studies` lists them)",
                file=sys.stderr,
            )
    analytics.wait_for_cache()


def _top(args, settings):
    analytics = _load(args, settings)
    _print(analytics.top_models(args.metric, args.n, args.mode), args)
    analytics.wait_for_cache()


def _plot(args, settings):
    from segtrack_analytics.plot import check_out, plot_learning_curves

    if (args.metric is None) == (args.study is None):
        raise ConfigError("give either --metric NAME (learning curves) or --study NAME (a study's trials)")
    default = f"study-{args.study}.png" if args.study else "learning-curves.png"
    out = check_out(Path(args.out or default))  # before the store is read: a bad --out fails at once
    if args.study:
        from segtrack_analytics.sweeps import plot_study, read_study_table

        print(f"wrote {plot_study(read_study_table(args.study, args.storage, settings), out)}")
        return
    analytics = _load(args, settings)
    print(f"wrote {plot_learning_curves(analytics, args.metric, out)}")
    analytics.wait_for_cache()


def _sweep(args, settings):
    from segtrack_analytics.sweeps import ranked_trials, read_study_table

    _print(ranked_trials(read_study_table(args.study, args.storage, settings)), args)
