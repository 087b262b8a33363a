"""run_study with a searching plugin written here (no Optuna): the hooks a study fires and their
order, per-trial settings and folders, exports only for a trial that beats the best so far,
failures, pruning across a CV's folds, Ctrl-C, and a space checked before anything runs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest

from segtrack import ConfigError, hookimpl, run_study
from segtrack.plugins.manager import get_plugin_manager
from testsupport.plugins import Recorder


class ListedTrials:
    """A TrialSource handing out fixed values in order; ``prune`` numbers are pruned."""

    def __init__(self, values: list[dict[str, Any]], prune: set[int] = frozenset()):
        self.values, self.prune = values, prune
        self.space = {key: sorted({v[key] for v in values}, key=repr) for key in values[0]}
        self.results: dict[int, tuple[str, float | None]] = {}
        self.opened = self.closed = False

    def candidate_values(self) -> Mapping[str, list[Any]]:
        return self.space

    def open(self, direction: str) -> Mapping[str, str]:
        self.opened, self.direction = True, direction
        return {"sampler": "listed"}

    def next_trial(self):
        number = len(self.results)
        return (number, self.values[number]) if number < len(self.values) else None

    def finish(self, number, value, error):
        state = "pruned" if number in self.prune else ("failed" if error or value is None else "completed")
        self.results[number] = (state, value)
        return state, value

    def best(self):
        done = [(n, v) for n, (s, v) in self.results.items() if s == "completed"]
        if not done:
            return None
        number, value = max(done, key=lambda item: item[1])
        return number, value, self.values[number]

    def close(self):
        self.closed = True


class StudyRecorder(Recorder):
    @hookimpl
    def study_start(self, study):
        self._record("study_start", study=study)

    @hookimpl
    def trial_end(self, trial):
        self._record("trial_end", trial=trial)

    @hookimpl
    def study_end(self, result):
        self._record("study_end", result=result)


class ScoreByTrial:
    """A plugin metric fixed per trial, so which trial is best is known in advance."""

    name = "score_by_trial"

    def __init__(self, scores: dict[int, float], prune_at: int | None = None):
        self.scores, self.prune_at = scores, prune_at

    @hookimpl
    def validation_metrics(self, run):
        return {"score": self.scores[run.trial]}

    @hookimpl
    def epoch_end(self, trainer, run):
        if run.trial == self.prune_at:
            trainer.request_stop("pruned", all_folds=True)


def _study(settings_factory, source, *plugins, folds=None, export="best", overrides=()):
    settings = settings_factory("checkpoint.monitor='score'", "export.enabled=true", *overrides)
    manager = get_plugin_manager(settings, list(plugins), autoload=False)
    return run_study(source, study_name="st", settings=settings, folds=folds, export=export, plugin_manager=manager)


def test_hooks_order_settings_folders_and_exports(settings_factory, tmp_path):
    source = ListedTrials([{"train.lr": 0.01}, {"train.lr": 0.02}, {"train.lr": 0.005}])
    recorder = StudyRecorder()
    result = _study(settings_factory, source, recorder, ScoreByTrial({0: 0.5, 1: 0.4, 2: 0.9}))
    names = [n for n in recorder.names() if n in ("study_start", "fit_start", "fit_end", "trial_end", "study_end")]
    assert names == ["study_start", *["fit_start", "fit_end", "trial_end"] * 3, "study_end"]
    assert source.opened and source.closed and source.direction == "max"
    starts = [kw["run"] for name, kw in recorder.calls if name == "fit_start"]
    study = next(kw["study"] for name, kw in recorder.calls if name == "study_start")
    assert [r.trial for r in starts] == [0, 1, 2] and {r.study_id for r in starts} == {study.study_id}
    assert [r.config["train"]["lr"] for r in starts] == [0.01, 0.02, 0.005]
    assert study.attributes["sampler"] == "listed" and study.objective == "score"
    for number in range(3):
        assert (tmp_path / "checkpoints" / "st" / f"trial-{number}" / "best.pt").is_file()
    # trial 1 (0.4) did not beat trial 0 (0.5): no ONNX for it; trial 2 did
    assert sorted(p.name for p in (tmp_path / "exports" / "st").glob("*.onnx")) == [
        "st-trial-0.onnx",
        "st-trial-2.onnx",
    ]
    assert [(t.state, t.value, t.best_number) for t in result.trials] == [
        ("completed", 0.5, 0),
        ("completed", 0.4, 0),
        ("completed", 0.9, 2),
    ]
    assert result.status == "completed" and result.best_number == 2 and dict(result.best_params) == {"train.lr": 0.005}


def test_a_failing_trial_is_recorded_and_the_study_goes_on(settings_factory):
    source = ListedTrials([{"model.name": "no_such_model"}, {"model.name": "unet"}])
    recorder = StudyRecorder()
    result = _study(settings_factory, source, recorder, ScoreByTrial({0: 0.1, 1: 0.2}), export="none")
    assert [t.state for t in result.trials] == ["failed", "completed"]
    assert "no_such_model" in result.trials[0].error and result.trials[0].epochs == 0
    assert recorder.names().count("fit_start") == 1  # the failed trial never began


def test_pruning_a_cv_trial_skips_its_remaining_folds(settings_factory):
    source = ListedTrials([{"train.lr": 0.01}, {"train.lr": 0.02}], prune={1})
    recorder = StudyRecorder()
    result = _study(settings_factory, source, recorder, ScoreByTrial({0: 0.5, 1: 0.1}, prune_at=1), folds=2)
    assert [t.state for t in result.trials] == ["completed", "pruned"]
    cv = result.trials[1].cross_validation
    assert len(cv.folds) == 1 and cv.folds[0].status == "stopped" and result.trials[1].epochs == 1
    infos = [kw["info"] for name, kw in recorder.calls if name == "cross_validation_start"]
    assert [(i.trial, i.study_id is not None) for i in infos] == [(0, True), (1, True)]
    assert math.isclose(result.trials[0].value, 0.5)


def test_ctrl_c_ends_the_trial_and_the_study_then_propagates(settings_factory):
    class CtrlC:
        @hookimpl
        def epoch_start(self, run, epoch):
            if run.trial == 1:
                raise KeyboardInterrupt

    source = ListedTrials([{"train.lr": 0.01}, {"train.lr": 0.02}, {"train.lr": 0.03}])
    recorder = StudyRecorder()
    with pytest.raises(KeyboardInterrupt):
        _study(settings_factory, source, recorder, CtrlC(), ScoreByTrial({0: 0.5, 1: 0.6, 2: 0.7}), export="none")
    ended = [kw["trial"] for name, kw in recorder.calls if name == "trial_end"]
    assert [(t.number, t.state) for t in ended] == [(0, "completed"), (1, "failed")]
    assert source.results[1] == ("failed", None) and source.closed
    assert recorder.names()[-1] == "study_end" and recorder.calls[-1][1]["result"].status == "interrupted"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([{"train.lrr": 0.1}], "'train.lrr' is not a setting (did you mean 'train.lr'?)"),
        ([{"train.epochs": "many"}], "'train.epochs' = 'many' is refused"),
        ([{"checkpoint.mode": "best"}], "'checkpoint.mode' = 'best' is refused"),
    ],
)
def test_a_space_the_settings_refuse_runs_nothing(settings_factory, tmp_path, values, expected):
    source = ListedTrials(values)
    with pytest.raises(ConfigError, match="search space") as caught:
        _study(settings_factory, source)
    assert expected in str(caught.value)
    assert not source.opened and not (tmp_path / "checkpoints").exists()


def test_bad_arguments(settings_factory):
    source = ListedTrials([{"train.lr": 0.01}])
    for kwargs, expected in [
        ({"folds": 1}, "at least 2 folds"),
        ({"export": "some"}, "export = 'some'"),
    ]:
        with pytest.raises(ConfigError, match=expected):
            _study(settings_factory, source, **kwargs)
    with pytest.raises(ConfigError, match="study name"):
        run_study(source, study_name="a/b", settings=settings_factory())


def test_a_plugin_raising_in_the_study_hooks_cannot_stop_the_study(settings_factory):
    class Broken:
        @hookimpl
        def study_start(self, study):
            raise RuntimeError("broken study_start")

        @hookimpl
        def trial_end(self, trial):
            raise RuntimeError("broken trial_end")

        @hookimpl
        def study_end(self, result):
            raise RuntimeError("broken study_end")

    source = ListedTrials([{"train.lr": 0.01}, {"train.lr": 0.02}])
    result = _study(settings_factory, source, Broken(), ScoreByTrial({0: 0.5, 1: 0.6}), export="none")
    assert [t.state for t in result.trials] == ["completed", "completed"] and result.status == "completed"
