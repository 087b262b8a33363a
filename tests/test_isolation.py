"""A plugin that raises, hangs or misbehaves never stops training (unless strict)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from segtrack import PluginHookError, hookimpl
from segtrack.plugins.manager import hook_names
from testsupport.plugins import Recorder

REPO = Path(__file__).resolve().parents[1]

TRAINING_HOOKS = [
    h
    for h in hook_names()
    if h
    not in (
        "cli_commands",
        "settings_schema",
        "settings_loaded",
        "load_state_dict",
        "cross_validation_start",
        "cross_validation_end",
        "study_start",
        "trial_links",
        "trial_end",
        "study_end",
    )
]


def _raising_everywhere():
    namespace = {"hookimpl": hookimpl}
    body = "".join(
        f"    @hookimpl\n    def {h}(self):\n        raise RuntimeError('broken {h}')\n"
        for h in [*TRAINING_HOOKS, "cross_validation_start", "cross_validation_end"]
    )
    exec("class Broken:\n    name = 'broken'\n" + body, namespace)
    return namespace["Broken"]()


def test_plugin_raising_in_every_hook_cannot_stop_the_fit(trainer_factory, caplog):
    recorder = Recorder()
    result = trainer_factory("export.enabled=true", plugins=[recorder, _raising_everywhere()]).fit()
    assert result.status == "completed" and result.epochs_completed == 2 and result.export is not None
    failures = {f.hook: f for f in result.plugin_failures}
    assert set(failures) == set(TRAINING_HOOKS) - {"fit_exception"}
    assert failures["train_batch_end"].count == 6 and failures["epoch_end"].count == 2
    assert all(f.plugin == "broken" and f.error.startswith("RuntimeError: broken") for f in failures.values())
    # the other plugin saw every hook, and each failure was reported once with its traceback
    assert recorder.names().count("epoch_end") == 2 and recorder.names()[-1] == "fit_end"
    assert caplog.text.count("plugin 'broken' failed in hook 'train_batch_end'") == 1
    assert "Traceback" in caplog.text


def test_cross_validation_survives_a_broken_plugin(trainer_factory):
    result = trainer_factory(plugins=[_raising_everywhere()]).cv(folds=2)
    assert [f.status for f in result.folds] == ["completed", "completed"]


def test_strict_makes_the_first_failure_fatal(trainer_factory):
    recorder = Recorder()
    trainer = trainer_factory(plugins=[recorder, _raising_everywhere()], strict=True)
    with pytest.raises(PluginHookError, match="'broken' raised in hook 'fit_start'"):
        trainer.fit()
    assert recorder.calls[-1][1]["result"].status == "failed"


def test_hanging_fit_end_is_bounded(trainer_factory):
    class Hangs:
        @hookimpl
        def fit_end(self):
            time.sleep(30)

    started = time.monotonic()
    result = trainer_factory("plugins.fit_end_timeout=0.5", plugins=[Hangs()]).fit()
    assert time.monotonic() - started < 20
    (failure,) = result.plugin_failures
    assert failure.plugin == "hangs" and failure.hook == "fit_end" and "TimeoutError" in failure.error


def test_a_plugin_may_raise_its_own_fit_end_bound(trainer_factory):
    class Drains:  # e.g. a tracker flushing a queue within a bound of its own
        fit_end_timeout = 5.0

        @hookimpl
        def fit_end(self):
            time.sleep(1.0)

    class Hangs:
        fit_end_timeout = 0.2  # a smaller bound of its own does not shorten the core's

        @hookimpl
        def fit_end(self):
            time.sleep(0.6)

    result = trainer_factory("plugins.fit_end_timeout=0.4", plugins=[Drains(), Hangs()]).fit()
    assert [(f.plugin, f.hook) for f in result.plugin_failures] == [("hangs", "fit_end")]
    assert "still running after 0.4 s" in result.plugin_failures[0].error


def test_the_readme_way_to_stop_training_works_and_raising_does_not(trainer_factory):
    """Proves the README's rule as written: the method and the status are read from its sentence,
    then a plugin raising in ``epoch_end`` does not stop the fit, while the method named there ends it
    after the current epoch and its checkpoints, with the status named there."""
    readme = " ".join((REPO / "README.md").read_text().split())
    rule = re.search(
        r"\*\*No hook stops training by raising\*\*: to stop .*? call `trainer\.(\w+)\(reason\)`; the fit "
        r"ends after the current epoch and its checkpoints, with status `(\w+)`",
        readme,
    )
    assert rule, "the README no longer says how a plugin stops training"
    method, status = rule.groups()

    class RaisesToStop:
        @hookimpl
        def epoch_end(self):
            raise RuntimeError("stop!")

    class Budget:
        @hookimpl
        def epoch_end(self, trainer, epoch):
            if epoch.epoch == 1:
                getattr(trainer, method)("time budget spent")

    recorder = Recorder()
    result = trainer_factory("train.epochs=4", plugins=[recorder, RaisesToStop(), Budget()]).fit()
    assert (result.status, result.stop_reason, result.epochs_completed) == (status, "time budget spent", 2)
    assert [f.hook for f in result.plugin_failures] == ["epoch_end"] and result.plugin_failures[0].count == 2
    saved = [(kw["checkpoint"].kind, kw["checkpoint"].epoch) for n, kw in recorder.calls if n == "checkpoint_saved"]
    assert ("last", 1) in saved  # the stopped epoch was still checkpointed
