"""`segtrack sweep` against real Optuna storages (SQLite file, PostgreSQL) and real MLflow stores:
trials, MLflow nesting, pruning, failures, several processes on one study, bad search spaces."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segtrack import hookimpl, thaw
from segtrack.config.settings import resolve_settings
from segtrack.plugins.manager import get_plugin_manager
from testsupport.mlflow_reads import expected_params
from testsupport.settings import tiny

SPACE = [
    "sweep.space={'train.lr' = { low = 1e-3, high = 3e-2, log = true }, 'model.width' = [2, 4]}",
    "sweep.seed=7",
]


def _sets(uri: str, *extra: str, space: list[str] = SPACE) -> list[str]:
    """--set pairs: tiny fits tracked at ``uri`` (a --set table merges into an earlier one: one space only)."""
    settings = [*tiny(num_samples=12, width=2), f"mlflow.tracking_uri='{uri}'", "mlflow.drain_timeout=60"]
    settings += ["mlflow.sample_overlays=0", "mlflow.checkpoint_policy='none'", *space, *extra]
    return [a for s in settings for a in ("--set", s)]


def _segtrack(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGTRACK_", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, "-m", "segtrack.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=400
    )


def _runs(uri: str) -> tuple[list, list]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("segtrack")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("segtrack.role") == "study-parent"]
    trials = [r for r in runs if "segtrack.trial" in r.data.tags and "segtrack.fold" not in r.data.tags]
    return parents, trials


def _study(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def test_four_trials_on_sqlite_each_a_nested_mlflow_run(tmp_path, sqlite_uri, capsys):
    """The CLI on the default storage: 4 trials, a categorical and a log-uniform float; each trial
    one MLflow run under the study's parent with the sampled values as params; what `runs sweep`
    prints equals Optuna's study; ONNX only for trials that beat every earlier one."""
    result = _segtrack(
        "sweep", "--study", "s4", "--trials", "4", *_sets(sqlite_uri, "export.enabled=true"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "this process ran 4 trial(s): 4 completed" in result.stdout
    study = _study(f"sqlite:///{tmp_path / 'optuna.db'}", "s4")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    assert {t.params["model.width"] for t in study.trials} <= {2, 4}
    assert all(1e-3 <= t.params["train.lr"] <= 3e-2 for t in study.trials)

    parents, trials = _runs(sqlite_uri)
    assert len(parents) == 1 and parents[0].data.params["study.name"] == "s4"
    assert json.loads(parents[0].data.params["study.space.model.width"]) == [2, 4]
    assert sorted(int(r.data.tags["segtrack.trial"]) for r in trials) == [0, 1, 2, 3]
    by_number = {t.number: t for t in study.trials}
    for run in trials:
        trial = by_number[int(run.data.tags["segtrack.trial"])]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["segtrack.trial_state"] == "completed"
        assert float(run.data.params["train.lr"]) == trial.params["train.lr"]
        assert int(run.data.params["model.width"]) == trial.params["model.width"]
        # every param is what the trial ran with: the sweep's settings, the sampled values in place
        settings = _settings(tmp_path, sqlite_uri, "export.enabled=true")
        effective = thaw(resolve_settings(settings, get_plugin_manager(settings)))  # plugin defaults in
        for dotted, value in trial.params.items():
            section, key = dotted.split(".", 1)
            effective[section][key] = value
        effective["run"]["name"] = f"s4-trial-{trial.number}"  # a trial's fit is named after it
        assert run.data.params == expected_params(effective), run.data.tags["segtrack.trial"]
        assert math.isclose(run.data.metrics["best_val_dice"], trial.value, rel_tol=1e-9, abs_tol=1e-12)
    # the parent: the study's best so far as its one metric, the best trial as a tag and in its description
    assert set(parents[0].data.metrics) == {"study_best_val_dice"}
    assert parents[0].data.metrics["study_best_val_dice"] == study.best_value
    assert parents[0].data.tags["segtrack.best_trial"] == str(study.best_trial.number)
    # a searched key is no base value on the parent; its run.name is its own
    assert parents[0].data.params["train.lr"] == parents[0].data.params["model.width"] == "searched"
    assert parents[0].data.params["run.name"] == "s4-study"
    note = parents[0].data.tags["mlflow.note.content"]
    best_run = next(r for r in trials if r.data.tags["segtrack.trial"] == str(study.best_trial.number))
    assert f"Best trial: **{study.best_trial.number}**" in note
    info = best_run.info
    assert f"[{info.run_name}](#/experiments/{info.experiment_id}/runs/{info.run_id})" in note
    for trial in study.trials:  # one row per trial: number, state, value, sampled values
        lr, width = trial.params["train.lr"], trial.params["model.width"]
        row = f"| {trial.number} | completed | {trial.value:.4g} | {width} | {lr:.4g} |"
        assert row in note, (row, note)

    # exports: a trial's ONNX exists exactly when it beat every trial finished before it
    best, improving = None, set()
    for trial in study.trials:
        if best is None or trial.value > best:
            best, improving = trial.value, improving | {trial.number}
    exported = {int(p.stem.rsplit("-", 1)[1]) for p in (tmp_path / "exports" / "s4").glob("*.onnx")}
    assert exported == improving and study.best_trial.number in exported

    from segtrack.cli import main

    capsys.readouterr()
    assert main(["runs", "sweep", "--study", "s4", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["trial"] == study.best_trial.number
    assert {r["trial"]: r["value"] for r in rows} == {t.number: t.value for t in study.trials}
    assert {r["trial"]: r["params.train.lr"] for r in rows} == {t.number: t.params["train.lr"] for t in study.trials}
    assert all(r["epochs"] == 2 for r in rows)
    assert main(["runs", "plot", "--study", "s4", "--out", "s4.png"]) == 0
    assert (tmp_path / "s4.png").read_bytes()[:4] == b"\x89PNG"


class BadTrialTwo:
    """A plugin metric: good for every trial but number 2, whose score is hopeless from epoch 1."""

    name = "bad_trial_two"

    @hookimpl
    def validation_metrics(self, run):
        return {"score": 0.0 if run.trial == 2 else 1.0}


def _settings(tmp_path: Path, uri: str, *extra: str, space: list[str] = SPACE):
    from segtrack import load_settings

    overrides = _sets(uri, *extra, space=space)[1::2]
    return load_settings(overrides=overrides, project_dir=tmp_path)


def test_a_bad_trial_is_pruned_after_its_first_report(tmp_path, sqlite_uri):
    from segtrack_optuna import sweep

    settings = _settings(
        tmp_path,
        sqlite_uri,
        "train.epochs=3",
        "checkpoint.monitor='score'",
        "sweep.startup_trials=2",
        "sweep.warmup_epochs=0",
        "sweep.export='none'",
    )
    result = sweep(settings, study="prune", trials=4, plugins=[BadTrialTwo()])
    states = {t.number: (t.state, t.epochs) for t in result.trials}
    assert states == {0: ("completed", 3), 1: ("completed", 3), 2: ("pruned", 1), 3: ("completed", 3)}
    study = _study(f"sqlite:///{tmp_path / 'optuna.db'}", "prune")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert study.trials[2].intermediate_values == {0: 0.0}
    # every value as the study records it, a pruned trial's (its last report) included, in MLflow too
    assert [t.value for t in result.trials] == [t.value for t in study.trials]
    parents, trials = _runs(sqlite_uri)
    tags = {int(r.data.tags["segtrack.trial"]): r.data.tags["segtrack.trial_state"] for r in trials}
    assert tags == {0: "completed", 1: "completed", 2: "pruned", 3: "completed"}
    values = {int(r.data.tags["segtrack.trial"]): float(r.data.tags["segtrack.trial_value"]) for r in trials}
    assert values == {t.number: t.value for t in study.trials}
    from mlflow import MlflowClient

    # each trial's run carries it as trial_value; the parent, the study's best so far per trial number
    assert {int(r.data.tags["segtrack.trial"]): r.data.metrics["trial_value"] for r in trials} == values
    curve = MlflowClient(sqlite_uri).get_metric_history(parents[0].info.run_id, "study_best_score")
    best = [max(t.value for t in study.trials[: n + 1] if t.state.name == "COMPLETE") for n in range(4)]
    assert sorted((m.step, m.value) for m in curve) == list(enumerate(best))


def test_a_failing_trial_is_recorded_failed_and_the_sweep_goes_on(tmp_path, sqlite_uri):
    """A grid over a model name that does not exist: that trial fails before training (Optuna FAIL,
    an MLflow run FAILED with the reason), the other one completes."""
    from segtrack_optuna import sweep

    space = ["sweep.sampler='grid'", "sweep.space={'model.name' = ['unet', 'no_such_model']}"]
    settings = _settings(tmp_path, sqlite_uri, "sweep.export='none'", space=space)
    result = sweep(settings, study="fails", trials=5)  # capped at the grid's 2 points
    states = {t.params["model.name"]: t.state for t in result.trials}
    assert states == {"unet": "completed", "no_such_model": "failed"}
    failed = next(t for t in result.trials if t.state == "failed")
    assert "no_such_model" in failed.error
    study = _study(f"sqlite:///{tmp_path / 'optuna.db'}", "fails")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
    _, trials = _runs(sqlite_uri)
    run = next(r for r in trials if r.data.tags["segtrack.trial_state"] == "failed")
    assert run.info.status == "FAILED" and "no_such_model" in run.data.tags["segtrack.error"]
    assert run.data.params["model.name"] == "no_such_model"


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("{'train.lrr' = { low = 1e-4, high = 1e-2 }}", "'train.lrr' is not a setting (did you mean 'train.lr'?)"),
        ("{'train.lr' = ['fast', 'slow']}", "'train.lr' = 'fast' is refused"),
        ("{'train.lr' = { low = 1e-2, high = 1e-2 }}", "the range is empty"),
        ("{'model.width' = []}", "the list of choices is empty"),
        ("{'train.lr' = { low = 0.0, high = 1.0, log = true }}", "a log range needs low > 0"),
        ("{'train.epochs' = { low = 1, high = 3, by = 1 }}", "unknown field(s) by"),
        ("{}", "[sweep.space] is empty"),
    ],
)
def test_a_bad_search_space_is_one_sentence_and_creates_nothing(tmp_path, capsys, space, expected):
    from segtrack.cli import main

    code = main(
        ["sweep", "--study", "bad", "--trials", "2", "--set", f"sweep.space={space}", "--set", "train.epochs=1"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert expected in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no storage, store, checkpoints or spool


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--trials", "0"], "--trials 0 is not allowed"),
        (["--folds", "1"], "--folds 1 is not allowed"),
        (["--storage", "postgresql+psycopg2://nobody@127.0.0.1:1/none"], "cannot open the Optuna storage"),
    ],
)
def test_bad_sweep_arguments_are_one_sentence(tmp_path, capsys, args, expected):
    from segtrack.cli import main

    space = "sweep.space={'train.lr' = [0.01]}"
    code = main(["sweep", "--study", "bad", *args, "--set", space, "--set", "mlflow.tracking_uri='sqlite:///x.db'"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.slow  # make test is at its 10-minute budget: `make reliability` runs it
def test_two_processes_share_one_postgresql_study(tmp_path, sqlite_uri):
    """Two `segtrack sweep` processes on one study in PostgreSQL: exactly N trials in all, no
    number twice, each trial one MLflow run nested under its process's parent of that study."""
    from testsupport.stores import temporary_postgres_database

    with temporary_postgres_database("segtrack_sweep") as url:
        workers = []
        for worker in range(2):
            folder = tmp_path / f"worker{worker}"
            folder.mkdir()
            # no pruner: which trial the median pruner stops depends on which process sampled what
            args = [
                "sweep",
                "--study",
                "shared",
                "--trials",
                "5",
                "--storage",
                url,
                *_sets(sqlite_uri, "sweep.pruner='none'"),
            ]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGTRACK_", "MLFLOW_"))}
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "segtrack.cli", *args],
                    cwd=folder,
                    env=env,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        try:
            errors = [process.communicate(timeout=400)[1] for process in workers]
        finally:
            for process in workers:  # only the processes this test started
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        for process, err in zip(workers, errors):
            assert process.returncode == 0, err[-3000:]
        study_trials = _study(url, "shared").trials  # read before the database is dropped
        numbers = [t.number for t in study_trials]
        assert sorted(numbers) == [0, 1, 2, 3, 4]
        assert {t.state.name for t in study_trials} == {"COMPLETE"}
        assert {t.user_attrs["segtrack.pid"] for t in study_trials} <= {p.pid for p in workers}

    parents, trials = _runs(sqlite_uri)
    assert len(parents) == 2 and {p.data.tags["segtrack.study"] for p in parents} == {"shared"}
    assert sorted(int(r.data.tags["segtrack.trial"]) for r in trials) == [0, 1, 2, 3, 4]
    parent_ids = {p.info.run_id for p in parents}
    assert all(r.data.tags["mlflow.parentRunId"] in parent_ids for r in trials)
    by_number = {t.number: t for t in study_trials}
    for run in trials:
        assert float(run.data.params["train.lr"]) == by_number[int(run.data.tags["segtrack.trial"])].params["train.lr"]
