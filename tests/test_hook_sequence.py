"""Golden hook-call sequences: the order plugins can rely on."""

from __future__ import annotations

import pytest

from segtrack.errors import PluginHookError
from testsupport.plugins import RaiseAt, Recorder

EPOCH = [
    "epoch_start",
    "train_batch_end",
    "train_batch_end",
    "train_batch_end",
    "validation_end",
    "epoch_end",
    "state_dict",
]


def test_two_epoch_fit_sequence(trainer_factory):
    recorder = Recorder()
    trainer = trainer_factory(plugins=[recorder])
    result = trainer.fit()
    # 16 samples, 25% validation -> 12 train samples in batches of 4 -> 3 steps per epoch
    expected = ["settings_loaded", "fit_start"]
    expected += [*EPOCH, "checkpoint_saved", "checkpoint_saved"]  # epoch 0 is always best: best, last
    names = recorder.names()
    second_epoch = names[len(expected) :]
    assert names[: len(expected)] == expected
    assert second_epoch[: len(EPOCH)] == EPOCH
    assert second_epoch[len(EPOCH) : -1] in (["checkpoint_saved", "checkpoint_saved"], ["checkpoint_saved"])
    assert names[-1] == "fit_end"
    assert result.status == "completed" and result.epochs_completed == 2
    kinds = [kw["checkpoint"].kind for name, kw in recorder.calls if name == "checkpoint_saved"]
    assert kinds[:2] == ["best", "last"] and kinds[-1] == "last"
    steps = [kw["step"].global_step for name, kw in recorder.calls if name == "train_batch_end"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_fit_raising_in_epoch_1_sequence(trainer_factory):
    recorder = Recorder()
    trainer = trainer_factory(plugins=[recorder, RaiseAt(1, RuntimeError("boom"))], strict=True)
    with pytest.raises(PluginHookError, match="raise_at.*epoch_start.*boom"):
        trainer.fit()
    names = recorder.names()
    # the recorder runs after raise_at (registered earlier -> called later), so epoch_start of epoch 1
    # never reaches it: the failure hook and fit_end follow epoch 0 directly
    assert names[-2:] == ["fit_exception", "fit_end"]
    assert names.count("epoch_end") == 1
    end = recorder.calls[-1][1]["result"]
    assert end.status == "failed" and end.epochs_completed == 1 and "boom" in end.error


def test_keyboard_interrupt_marks_interrupted(trainer_factory):
    recorder = Recorder()
    trainer = trainer_factory(plugins=[recorder, RaiseAt(1, KeyboardInterrupt())])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert recorder.names()[-2:] == ["fit_exception", "fit_end"]
    assert recorder.calls[-1][1]["result"].status == "interrupted"


def test_request_stop_ends_after_the_epoch(trainer_factory):
    from segtrack import hookimpl

    class StopAfterFirst:
        @hookimpl
        def epoch_end(self, trainer, epoch):
            trainer.request_stop("enough")

    recorder = Recorder()
    result = trainer_factory("train.epochs=5", plugins=[recorder, StopAfterFirst()]).fit()
    assert result.status == "stopped" and result.stop_reason == "enough" and result.epochs_completed == 1
    assert recorder.names().count("checkpoint_saved") == 2  # the stopped epoch is still checkpointed


def test_cross_validation_sequence_and_fold_info(trainer_factory):
    recorder = Recorder()
    result = trainer_factory(plugins=[recorder]).cv(folds=2)
    names = recorder.names()
    assert names[1] == "cross_validation_start" and names[-1] == "cross_validation_end"
    runs = [kw["run"] for name, kw in recorder.calls if name == "fit_start"]
    assert [r.fold for r in runs] == [0, 1] and {r.num_folds for r in runs} == {2}
    assert len({r.cv_id for r in runs}) == 1 and runs[0].cv_id == result.cv_id
    assert runs[0].val_sha256 != runs[1].val_sha256  # different validation folds
    assert [f.fold for f in result.folds] == [0, 1]
    dice = [f.best_metrics["val_dice"] for f in result.folds]
    assert result.summary["val_dice"]["mean"] == pytest.approx(sum(dice) / 2)
    assert result.summary["val_dice"]["min"] == min(dice)


def test_epoch_metrics_are_named_and_finite(trainer_factory):
    recorder = Recorder()
    trainer_factory(plugins=[recorder]).fit()
    epochs = [kw["epoch"] for name, kw in recorder.calls if name == "epoch_end"]
    per_class = {f"val_{m}_{k}" for m in ("dice", "iou") for k in range(3)}  # classes present in the data
    assert set(epochs[0].metrics) == {"train_loss", "val_loss", "val_dice", "val_iou", "lr"} | per_class
    assert all(0 <= e.metrics["val_dice"] <= 1 and e.metrics["train_loss"] > 0 for e in epochs)
    validation = next(kw["result"] for name, kw in recorder.calls if name == "validation_end")
    assert len(validation.samples) == 4 and validation.samples[0].prediction.shape == (16, 16)
    with pytest.raises(TypeError):
        epochs[0].metrics["val_dice"] = 1.0  # frozen: a plugin cannot change what others see
