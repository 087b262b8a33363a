"""A store holding a study (segtrack sweep) beside cross-validations: its trials are never
summarised or drawn as folds, and the study gets a summary of its own; its trial rank."""

from __future__ import annotations

import itertools
import json

import pytest
from mlflow import MlflowClient

from segtrack.cli import main
from segtrack_analytics import RunAnalytics
from segtrack_analytics.plot import learning_curves_figure
from testsupport.analytics_stores import populate_study


@pytest.fixture
def study_store(sqlite_uri):
    return sqlite_uri, populate_study(sqlite_uri)


def _loaded(uri: str, cache_dir=None) -> RunAnalytics:
    analytics = RunAnalytics(uri, cache_dir=cache_dir)
    analytics.load_experiment_runs("segtrack")
    return analytics


def test_a_study_parent_is_no_cross_validation_and_has_a_summary_of_its_own(study_store):
    uri, _ids = study_store
    analytics = _loaded(uri)
    folds = {r["cv_run"]: r["folds"] for r in analytics.cross_fold_summary("best_val_dice").to_pylist()}
    assert folds == {"cv-parent": 2, "trial-4-cv": 2}  # the CV trial is a CV; the study parent is not
    (study,) = analytics.study_summary().to_pylist()
    assert study == {
        "study": "s1",
        "objective": "val_loss",
        "direction": "min",  # recorded as Optuna's "minimize"
        "trials": 5,  # the CV trial counts once, its folds not at all
        "completed": 3,
        "pruned": 1,
        "failed": 1,
        "unfinished": 0,
        "best_trial": 1,  # lowest completed value; the pruned 0.1 does not count; trial 4 ties, later
        "best_value": 0.2,
        "best_run": "trial-1",
        "study_id": "sid1",
    }
    only = analytics.cross_fold_summary("best_val_dice", cv_id="cv2").to_pylist()
    assert [(r["cv_run"], r["folds"]) for r in only] == [("trial-4-cv", 2)]
    assert analytics.cross_fold_summary("best_val_dice", cv_id="nope").num_rows == 0


def test_runs_summary_prints_the_studies_in_a_table_of_their_own(study_store, capsys):
    uri, _ids = study_store
    store = ["--tracking-uri", uri]
    assert main(["runs", "summary", "--metric", "best_val_dice", *store]) == 0
    out = capsys.readouterr().out
    cvs, studies = out.split("\nstudies: ")
    assert cvs.startswith("cross-validations: best_val_dice") and "cv-parent" in cvs and "study-parent" not in cvs
    assert "(2 rows)" in cvs
    header, _rule, row, count = studies.splitlines()[1:]
    assert header.split() == [
        "study", "objective", "direction", "trials", "completed", "pruned", "failed", "unfinished",
        "best_trial", "best_value", "best_run", "study_id",
    ]  # fmt: skip
    assert row.split() == ["s1", "val_loss", "min", "5", "3", "1", "1", "0", "1", "0.2", "trial-1", "sid1"]
    assert count == "(1 row)"

    # csv and json: one table each; the studies with --studies
    assert main(["runs", "summary", "--metric", "best_val_dice", "--format", "json", *store]) == 0
    captured = capsys.readouterr()
    assert [r["cv_run"] for r in json.loads(captured.out)] == ["cv-parent", "trial-4-cv"]
    assert "1 study too: `segtrack runs summary --studies`" in captured.err
    assert main(["runs", "summary", "--studies", "--format", "json", *store]) == 0
    assert [(s["study"], s["best_trial"]) for s in json.loads(capsys.readouterr().out)] == [("s1", 1)]
    assert main(["runs", "summary", "--studies", "--by", "params.x", *store]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_learning_curves_draw_a_band_per_cross_validation_never_per_study(study_store):
    uri, _ids = study_store
    figure = learning_curves_figure(_loaded(uri), "val_dice")
    (ax,) = figure.axes
    labels = ax.get_legend_handles_labels()[1]
    assert sorted(label for label in labels if "mean of" in label) == [
        "cv-parent: mean of 2 folds",
        "trial-4-cv: mean of 2 folds",
    ]
    assert {f"trial-{n}" for n in range(4)} <= set(labels)  # each trial its own line
    assert list(ax.get_xticks()) == [int(t) for t in ax.get_xticks()]  # epochs 1 and 2, nothing between
    assert ax.get_xlabel() == "epoch"


def test_a_trial_whose_verdict_came_after_its_run_finished_is_read_again(sqlite_uri, tmp_path):
    """segtrack-mlflow tags a CV trial's parent with its state and value when the trial ends, after
    the parent finished: a cache written in between must not keep the row without them."""
    ids = populate_study(sqlite_uri)
    client = MlflowClient(sqlite_uri)
    client.delete_tag(ids["trial-4-cv"], "segtrack.trial_state")
    cache = tmp_path / "cache"
    analytics = _loaded(sqlite_uri, cache)
    assert analytics.study_summary().to_pylist()[0]["unfinished"] == 1
    analytics.wait_for_cache()
    client.set_tag(ids["trial-4-cv"], "segtrack.trial_state", "completed")  # status and end time unchanged
    (study,) = _loaded(sqlite_uri, cache).study_summary().to_pylist()
    assert (study["completed"], study["unfinished"]) == (3, 0)


def _study_table(lrs: list[float]):
    report = pytest.importorskip("segtrack_optuna.report")
    rows = [
        {
            "trial": number,
            "state": "pruned" if number % 3 == 0 else "completed",
            "value": 0.05 + 0.01 * number,
            "epochs": 2,
            "duration_s": 1.0,
            "run": f"s-trial-{number}",
            "error": None,
            "params.train.lr": lr,
            "params.model.width": 2 + 2 * (number % 2),
        }
        for number, lr in enumerate(lrs)
    ]
    return report.StudyTable("s", "maximize", ["train.lr", "model.width"], {"train.lr"}, rows)


@pytest.mark.parametrize(
    "lrs",
    [
        [0.001252, 0.002, 0.0001132, 0.0013],  # the review's study: 1.2 decades
        [0.0011, 0.0015, 0.0019, 0.0028, 0.0013],  # less than half a decade: minor labels overlapped
        [0.00031, 0.0004, 0.00055, 0.0007, 0.0009],
        [1e-7, 1e-5, 3e-3, 0.5],  # many decades
    ],
)
def test_study_plot_has_whole_trial_numbers_and_log_labels_that_do_not_overlap(lrs):
    from segtrack_analytics.sweeps import study_figure

    figure = study_figure(_study_table(lrs))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    trials, lr, width = figure.axes
    for ax in (trials, width):  # trial numbers and an integer setting: no 0.5 or 2.5
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert lr.get_xscale() == "log"
    labels = [t for t in lr.xaxis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
    assert len(labels) >= 2, [t.get_text() for t in labels]
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda box: box.x0)
    assert all(a.x1 < b.x0 for a, b in itertools.pairwise(boxes)), [t.get_text() for t in labels]
