"""A study's workers on a real SQLite storage and MLflow store: honest joins (objective, folds, base
settings), trials queued by hand, --timeout, links both ways between trials and runs, a failure's
whole sentence, and bad sweep arguments answered in one sentence with nothing created."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from segtrack import ConfigError, hookimpl

SPACE = ["sweep.space={'train.lr' = { low = 1e-3, high = 3e-2, log = true }, 'model.width' = [2, 4]}", "sweep.seed=7"]


def _settings(tmp_path: Path, uri: str, *extra: str, space: list[str] = SPACE):
    from segtrack import load_settings
    from testsupport.settings import tiny

    overrides = [*tiny(epochs=1, num_samples=12, width=2), f"mlflow.tracking_uri='{uri}'", "mlflow.drain_timeout=60"]
    overrides += ["mlflow.sample_overlays=0", "mlflow.checkpoint_policy='none'", "sweep.export='none'"]
    return load_settings(overrides=[*overrides, *space, *extra], project_dir=tmp_path)


def _study(tmp_path: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def _runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("segtrack").experiment_id], max_results=1000)


def test_a_worker_that_would_rank_other_trials_is_refused_in_one_sentence(tmp_path, sqlite_uri, caplog):
    from segtrack_optuna import sweep

    sweep(_settings(tmp_path, sqlite_uri), study="j", trials=1)
    refusals = [
        (("checkpoint.monitor='val_iou'",), {}, "ranks its trials by val_dice (max), this worker by val_iou (max)"),
        (("train.epochs=2",), {}, "other base settings (train.epochs: 1 in the study, 2 here)"),
        ((), {"folds": 2}, "fits each trial once (no --folds), this worker asks for 2 folds: leave --folds out"),
    ]
    for extra, kwargs, expected in refusals:
        with pytest.raises(ConfigError) as refused:
            sweep(_settings(tmp_path, sqlite_uri, *extra), study="j", trials=1, **kwargs)
        assert expected in str(refused.value) and "\n" not in str(refused.value)
    assert len(_study(tmp_path, "j").trials) == 1  # a refused worker queues and runs nothing
    assert len(_runs(sqlite_uri)) == 2  # nor opens an MLflow run: the first worker's parent and trial

    # where a worker runs may differ; --force-join takes other base settings with one warning each
    joined = sweep(_settings(tmp_path, sqlite_uri, "checkpoint.dir='elsewhere'"), study="j", trials=2)
    assert [t.state for t in joined.trials] == ["completed"]
    with caplog.at_level(logging.WARNING, logger="segtrack.sweep"):
        forced = sweep(_settings(tmp_path, sqlite_uri, "train.epochs=2"), study="j", trials=3, force_join=True)
    assert [t.state for t in forced.trials] == ["completed"]
    warned = [r.message for r in caplog.records if "--force-join" in r.message]
    assert len(warned) == 1 and "train.epochs: 1 in the study, 2 here" in warned[0]


class Links:
    """A tracker of its own: each trial's ticket, kept by Optuna with the trial."""

    @hookimpl
    def trial_links(self, study_id, number):
        return {"ticket.id": f"T-{number}", "ticket.study": study_id}


@pytest.mark.slow  # two workers of CV trials: `make reliability` runs it (make test is at its budget)
def test_trials_and_runs_lead_to_each_other(tmp_path, sqlite_uri):
    """Each trial keeps its MLflow run (id, name, experiment, masked URI) and any plugin's links;
    each trial run, and each fold run of a CV trial, carries the study, the trial and one study id
    shared by every worker; every trial run has the objective as one `trial_value` metric."""
    from segtrack_optuna import sweep

    sweep(_settings(tmp_path, sqlite_uri), study="linked", trials=1, folds=2, plugins=[Links()])
    sweep(_settings(tmp_path, sqlite_uri), study="linked", trials=2, folds=2)  # a second worker joins
    study = _study(tmp_path, "linked")
    study_id = study.user_attrs["segtrack.study_id"]
    runs = {r.info.run_id: r for r in _runs(sqlite_uri)}
    for trial in study.trials:
        run = runs[trial.user_attrs["mlflow.run_id"]]
        assert run.info.run_name == trial.user_attrs["mlflow.run_name"]
        assert trial.user_attrs["mlflow.tracking_uri"] == sqlite_uri
        assert run.info.experiment_id == trial.user_attrs["mlflow.experiment_id"]
        assert run.data.metrics["trial_value"] == pytest.approx(trial.value)
        assert (run.data.tags["segtrack.trial"], run.data.tags["segtrack.study_id"]) == (str(trial.number), study_id)
    assert study.trials[0].user_attrs["ticket.id"] == "T-0" and study.trials[0].user_attrs["ticket.study"] == study_id
    folds = [r for r in runs.values() if "segtrack.fold" in r.data.tags]
    assert len(folds) == 4
    assert {(r.data.tags["segtrack.study"], r.data.tags["segtrack.study_id"]) for r in folds} == {("linked", study_id)}
    assert sorted(r.data.tags["segtrack.trial"] for r in folds) == ["0", "0", "1", "1"]
    parents = [r for r in runs.values() if r.data.tags.get("segtrack.role") == "study-parent"]
    assert len(parents) == 2 and {p.data.tags["segtrack.study_id"] for p in parents} == {study_id}


def test_enqueued_values_run_and_timeout_starts_no_new_trial(tmp_path, sqlite_uri):
    from segtrack_optuna import sweep

    result = sweep(_settings(tmp_path, sqlite_uri), study="q", trials=1, enqueue=[["train.lr=0.02", "model.width=4"]])
    study = _study(tmp_path, "q")
    assert len(result.trials) == 2 and study.user_attrs["segtrack.trials"] == 2
    assert study.trials[1].params == {"train.lr": 0.02, "model.width": 4}
    late = sweep(_settings(tmp_path, sqlite_uri), study="q", trials=4, timeout=1e-9)
    assert late.trials == ()  # the timeout passed before a first trial could start
    assert [t.state.name for t in _study(tmp_path, "q").trials] == ["COMPLETE", "COMPLETE", "WAITING", "WAITING"]


def test_a_trial_failing_on_its_own_settings_keeps_the_whole_sentence_and_is_not_retried(tmp_path, sqlite_uri):
    """nesterov with momentum 0: each value alone is allowed, the pair is not."""
    from segtrack_optuna import sweep

    space = ["sweep.sampler='grid'", "sweep.space={'train.nesterov' = [true], 'train.momentum' = [0.0, 0.9]}"]
    settings = _settings(tmp_path, sqlite_uri, "train.optimizer='sgd'", space=space)
    result = sweep(settings, study="pair", trials=2)
    failed = next(t for t in result.trials if t.state == "failed")
    assert failed.error.startswith("ConfigError: invalid settings:") and "momentum" in failed.error.split(":", 2)[2]
    study = _study(tmp_path, "pair")
    assert len(study.trials) == 2  # sweep.retries_failed = 0: not queued again
    assert study.trials[failed.number].user_attrs["segtrack.error"] == failed.error


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--study", "lr:v2?"], "study name 'lr:v2?' is not allowed"),
        (["--timeout", "-1"], "--timeout -1.0 is not allowed"),
        (["--enqueue", "train.lr"], "--enqueue 'train.lr' is not key=value"),
        (["--enqueue", "model.depth=2"], "--enqueue model.depth: not a key of [sweep.space]"),
        (["--enqueue", "train.lr=5"], "--enqueue train.lr=5: outside its range"),
        (["--set", "sweep.stale_after_s=20", "--set", "sweep.heartbeat_s=30"], "sweep.stale_after_s = 20 is not more"),
        (["--storage", "postgresql+psycopg2://nobody@127.0.0.1:5432/postgres"], "refused the credentials"),
        (["--storage", "sqlite:///no/such/folder/optuna.db"], "the folder of the Optuna storage"),
    ],
)
def test_bad_sweep_input_is_one_sentence_and_creates_nothing(tmp_path, capsys, args, expected):
    from segtrack.cli import main

    space = "sweep.space={'train.lr' = { low = 1e-3, high = 3e-2 }}"
    base = ["--study", "bad", "--set", space, "--set", "mlflow.tracking_uri='sqlite:///x.db'"]
    code = main(["sweep", *base, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no storage, store, checkpoints or spool


def test_a_password_in_a_searched_url_is_masked_everywhere_the_study_is_shown(tmp_path, sqlite_uri, capsys):
    from segtrack.cli import main
    from segtrack_optuna import sweep

    url = "https://reader:hunter2@data.example.org/set"
    space = [f"sweep.space={{'data.kwargs.source_url' = ['{url}']}}"]
    sweep(_settings(tmp_path, sqlite_uri, space=space), study="masked", trials=1)
    assert main(["runs", "sweep", "--study", "masked"]) == 0
    shown = capsys.readouterr()
    assert "hunter2" not in shown.out + shown.err and "reader:***@data.example.org" in shown.out + shown.err
    for run in _runs(sqlite_uri):
        recorded = {**run.data.params, **run.data.tags}
        assert not [key for key, value in recorded.items() if "hunter2" in value], run.info.run_name
    spooled = [p for p in (tmp_path / ".segtrack").rglob("*") if p.is_file() and b"hunter2" in p.read_bytes()]
    assert spooled == []
