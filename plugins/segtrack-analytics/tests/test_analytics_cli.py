"""`segtrack runs ...` commands and the plugin's output in the training loop."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from PIL import Image

from segtrack.cli import main
from testsupport.analytics_stores import populate
from testsupport.settings import cli_sets


def test_train_and_cv_then_summary_top_list_and_plot(sqlite_uri, capsys):
    # the ranking counts the fit once, before its run is sent (drain_timeout 0) and after (30)
    assert main(["train", *cli_sets(sqlite_uri, "run.name='single'", "mlflow.drain_timeout=0")]) == 0
    err = capsys.readouterr().err
    assert "analytics: this run ranks 1 of 1 in the experiment on best_val_dice" in err
    assert main(["train", *cli_sets(sqlite_uri, "run.name='sent'", "mlflow.drain_timeout=30")]) == 0
    assert re.search(r"analytics: this run ranks [12] of 2 in the experiment", capsys.readouterr().err)
    assert main(["cv", "--folds", "3", *cli_sets(sqlite_uri, "run.name='cv3'", "mlflow.drain_timeout=0")]) == 0
    err = capsys.readouterr().err
    assert "analytics: cross-fold summary of this cross-validation on best_val_dice" in err and "cv3" in err

    assert main(["runs", "summary", "--metric", "best_val_dice", "--format", "json", *cli_sets(sqlite_uri)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (
        re.fullmatch(r"cv3-[0-9a-f]{6}-cv", row["cv_run"])
        and row["folds"] == 3
        and row["min"] <= row["mean"] <= row["max"]
    )

    assert main(["runs", "top", "--metric", "best_val_dice", "-n", "2", "--format", "csv", *cli_sets(sqlite_uri)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2 and float(rows[0]["metrics.best_val_dice"]) >= float(rows[1]["metrics.best_val_dice"])

    assert main(["runs", "list", *cli_sets(sqlite_uri)]) == 0
    listing = capsys.readouterr().out
    assert "single-" in listing and re.search(r"fold2-cv3-[0-9a-f]{6}", listing) and "(6 rows)" in listing

    assert (
        main(
            [
                "runs",
                "query",
                "SELECT count(*) AS n FROM metrics WHERE key = 'val_dice'",
                "--format",
                "json",
                *cli_sets(sqlite_uri),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == [{"n": 2 * 5}]  # 2 epochs of 2 fits and 3 folds

    assert main(["runs", "plot", "--metric", "val_dice", "--out", "curves/dice.png", *cli_sets(sqlite_uri)]) == 0
    with Image.open("curves/dice.png") as image:
        assert image.format == "PNG" and image.size[0] >= 800
    # drawn against the epoch (logged at the global step, with "epoch" beside it): folds share epochs 1-2
    from segtrack_analytics import RunAnalytics
    from segtrack_analytics.plot import learning_curves

    analytics = RunAnalytics(sqlite_uri, cache_dir=None)
    analytics.load_experiment_runs("segtrack")
    curves, by_epoch = learning_curves(analytics, "val_dice")
    assert by_epoch and len(curves) == 5 and all(sorted(c["points"]) == [1, 2] for c in curves.values())


def test_the_table_after_cv_shows_that_cv_only(sqlite_uri, capsys):
    assert main(["cv", "--folds", "2", *cli_sets(sqlite_uri, "run.name='earlier'", "mlflow.drain_timeout=30")]) == 0
    capsys.readouterr()
    assert main(["cv", "--folds", "2", *cli_sets(sqlite_uri, "run.name='later'", "mlflow.drain_timeout=30")]) == 0
    err = capsys.readouterr().err
    table = err[err.index("analytics: cross-fold summary of this cross-validation") :].splitlines()
    assert re.fullmatch(r"later-[0-9a-f]{6}-cv", table[3].split()[0]) and table[4] == "(1 row)"
    assert "earlier" not in err


def test_a_trial_of_a_study_says_its_rank_in_the_study_not_in_the_experiment(sqlite_uri, capsys):
    """After each trial, plain or cross-validated: its rank among the study's trials, as `runs sweep`
    ranks them; no experiment-wide rank or summary."""
    pytest.importorskip("segtrack_optuna")
    space = "sweep.space={'train.lr' = { low = 1e-3, high = 3e-1, log = true }}"
    assert main(["sweep", "--study", "st", "--trials", "2", *cli_sets(sqlite_uri, space, "sweep.seed=3")]) == 0
    err = capsys.readouterr().err
    assert "in the experiment" not in err and "cross-fold summary" not in err
    ranks = re.findall(r"analytics: trial (\d) ranks (\d) of (\d) in study st on val_dice \(", err)
    assert [(n, total) for n, _rank, total in ranks] == [("0", "1"), ("1", "2")]
    assert main(["runs", "sweep", "--study", "st", "--format", "json"]) == 0
    ranked = {str(r["trial"]): str(r["rank"]) for r in json.loads(capsys.readouterr().out)}
    assert ranked["1"] == ranks[-1][1]  # the last trial's rank, among both, is the one `runs sweep` gives

    sets = cli_sets(sqlite_uri, space, "sweep.seed=3", "mlflow.drain_timeout=30")
    assert main(["sweep", "--study", "cvst", "--trials", "1", "--folds", "2", *sets]) == 0
    err = capsys.readouterr().err
    assert "in the experiment" not in err and "cross-fold summary" not in err
    assert "analytics: trial 0 ranks 1 of 1 in study cvst on val_dice (" in err


def test_sql_errors_show_duckdbs_message_and_the_columns(sqlite_uri, capsys):
    populate(sqlite_uri, experiment="segtrack")
    code = main(["runs", "query", "SELEC 1", *cli_sets(sqlite_uri)])
    err = capsys.readouterr().err
    assert code == 2 and "Parser Error" in err and "runs columns: run_id, experiment" in err
    code = main(["runs", "top", "--metric", "val_dize", *cli_sets(sqlite_uri)])
    assert code == 2 and "did you mean metrics.val_dice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["runs", "top", "--metric", "val_dice", "--tracking-uri", "sqlite:///missing.db"],
            "no MLflow store at missing.db",
        ),
        (["runs", "plot", "--metric", "nothing"], "no run has a history of 'nothing'"),
        (["runs", "list", "--set", "analytics.cache_dirr='x'"], "analytics.cache_dirr: unknown setting"),
    ],
)
def test_bad_cli_input(sqlite_uri, capsys, args, message):
    populate(sqlite_uri, experiment="segtrack")
    assert main([*args, "--set", f"mlflow.tracking_uri='{sqlite_uri}'"]) != 0
    assert message in capsys.readouterr().err


def test_every_float_in_a_table_has_four_significant_digits():
    import pyarrow as pa

    from segtrack_analytics.render import render

    values = [0.001252, 0.002, 0.0001132, 0.0013, 0.0, 0.0533, 0.81234, 12.3456, 123456.0, float("nan")]
    table = pa.table({"lr": values, "n": list(range(len(values)))})
    cells = [line.split()[0] for line in render(table).splitlines()[2:-1]]
    assert cells == ["0.001252", "0.002", "0.0001132", "0.0013", "0", "0.0533", "0.8123", "12.35", "1.235e+05", "nan"]
    assert render(table, "csv").splitlines()[1:3] == ["0.001252,0", "0.002,1"]
