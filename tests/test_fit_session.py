"""FitSession, the one public hook path, driven by a hand-written loop: the hook sequence, resume,
isolation, the end-of-fit rules, the records of what the loop brought, bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from segtrack import ConfigError, FitSession, Loop, RunInfo, hookimpl
from segtrack.errors import PluginHookError
from testsupport.plugins import Recorder

SETTINGS = {"plugins": {"autoload": False, "disabled": ["progress"]}, "export": {"dir": "exports"}}


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))


def hand_loop(fit: FitSession, epochs: int, batches: int = 2, dice=(0.5, 0.7, 0.6, 0.8)) -> None:
    for epoch in range(fit.start_epoch, epochs):
        for _ in range(batches):
            fit.batch_end(fit.global_step + 1, torch.tensor(1.0 / (epoch + 1)))
        is_best = fit.epoch_end(epoch, {"train_loss": 1.0 / (epoch + 1), "val_dice": dice[epoch]})
        torch.save({"segtrack": fit.state_dict()}, "last.pt")
        fit.checkpoint_saved("last.pt", epoch=epoch, is_best=is_best)


def test_a_hand_loop_fires_the_hooks_in_the_trainers_order():
    recorder = Recorder()
    with FitSession(SETTINGS, [recorder], model=tiny_model(), run_name="hand", epochs=2) as fit:
        hand_loop(fit, 2)
    names = recorder.names()
    epoch = ["train_batch_end", "train_batch_end", "epoch_end", "state_dict", "checkpoint_saved", "checkpoint_saved"]
    assert names == ["settings_loaded", "fit_start", *epoch, *epoch, "fit_end"]
    kinds = [kw["checkpoint"].kind for name, kw in recorder.calls if name == "checkpoint_saved"]
    assert kinds == ["last", "best", "last", "best"]
    steps = [kw["step"] for name, kw in recorder.calls if name == "train_batch_end"]
    assert [s.global_step for s in steps] == [1, 2, 3, 4]
    assert [s.epoch for s in steps] == [0, 0, 1, 1]  # counted without epoch_start calls
    ends = [kw["epoch"] for name, kw in recorder.calls if name == "epoch_end"]
    assert [(e.epoch, e.is_best, e.best_epoch, e.global_step) for e in ends] == [(0, True, 0, 2), (1, True, 1, 4)]
    result = recorder.calls[-1][1]["result"]
    assert result.status == "completed" and result.epochs_completed == 2 and result.best_value == 0.7
    assert fit.result == dataclasses.replace(result, plugin_failures=())
    run = recorder.calls[1][1]["run"]
    assert isinstance(run, RunInfo) and run.loop == "own" and run.max_epochs == 2 and run.run_name == "hand"
    assert run.num_parameters == sum(p.numel() for p in tiny_model().parameters()) and run.num_classes == 2
    assert isinstance(recorder.calls[1][1]["trainer"], Loop) and recorder.calls[1][1]["trainer"] is fit


def test_the_trainer_is_a_loop_too(trainer_factory):
    recorder = Recorder()
    trainer = trainer_factory("train.epochs=1", plugins=[recorder])
    trainer.fit()
    assert isinstance(trainer, Loop)
    hook_trainer = next(kw["trainer"] for name, kw in recorder.calls if name == "fit_start")
    assert hook_trainer is trainer
    run = next(kw["run"] for name, kw in recorder.calls if name == "fit_start")
    assert run.loop == "segtrack" and run.max_epochs == 1


def test_resume_state_continues_the_fit_and_gives_plugins_their_state():
    first = Recorder()
    with FitSession(SETTINGS, [first], model=tiny_model()) as fit:
        hand_loop(fit, 2)
    saved = torch.load("last.pt", weights_only=False)["segtrack"]
    second = Recorder()
    with FitSession(SETTINGS, [second], model=tiny_model(), resume_state=saved) as fit:
        assert fit.start_epoch == 2 and fit.global_step == 4
        hand_loop(fit, 4)
    names = second.names()
    assert names[:3] == ["settings_loaded", "load_state_dict", "fit_start"]
    assert second.calls[1][1]["state"] == saved["plugins"]["recorder"]
    run = second.calls[2][1]["run"]
    assert run.start_epoch == 2 and run.resumed_from
    epochs = [kw["epoch"] for name, kw in second.calls if name == "epoch_end"]
    assert [e.epoch for e in epochs] == [2, 3] and [e.global_step for e in epochs] == [6, 8]
    result = second.calls[-1][1]["result"]
    assert result.best_epoch == 3 and result.best_value == 0.8 and result.epochs_completed == 4


def test_a_raising_plugin_is_reported_and_the_loop_goes_on(caplog):
    class Broken:
        name = "broken"

        @hookimpl
        def epoch_end(self, epoch):
            raise RuntimeError("tracker bug")

    recorder = Recorder()
    with FitSession(SETTINGS, [Broken(), recorder], model=tiny_model()) as fit:
        hand_loop(fit, 2)
    assert fit.result is not None and fit.result.status == "completed"
    assert [(f.plugin, f.hook, f.count) for f in fit.result.plugin_failures] == [("broken", "epoch_end", 2)]
    assert recorder.names().count("epoch_end") == 2
    assert "plugin 'broken' failed in hook 'epoch_end'" in caplog.text


@pytest.mark.parametrize(
    "error, status", [(RuntimeError("loss is nan"), "failed"), (KeyboardInterrupt(), "interrupted")]
)
def test_an_exception_in_the_loop_ends_the_fit_and_propagates(error, status):
    recorder = Recorder()
    with pytest.raises(type(error)), FitSession(SETTINGS, [recorder], model=tiny_model()) as fit:
        hand_loop(fit, 1)
        raise error
    assert recorder.names()[-2:] == ["fit_exception", "fit_end"]
    result = recorder.calls[-1][1]["result"]
    assert result.status == status and result.epochs_completed == 1 and result.best_epoch == 0


def test_strict_plugins_stop_a_healthy_fit_but_not_its_end():
    class Broken:
        name = "broken"

        @hookimpl
        def epoch_end(self, epoch):
            raise RuntimeError("strict bug")

        @hookimpl
        def fit_end(self, result):
            raise RuntimeError("also broken at the end")

    settings = {**SETTINGS, "plugins": {**SETTINGS["plugins"], "strict": True}}
    recorder = Recorder()
    with pytest.raises(PluginHookError, match="broken.*epoch_end"), FitSession(settings, [Broken(), recorder]) as fit:
        hand_loop(fit, 2)
    assert recorder.names()[-1] == "fit_end" and recorder.calls[-1][1]["result"].status == "failed"


def test_a_plugin_can_ask_a_hand_loop_to_stop():
    class StopAfterFirst:
        @hookimpl
        def epoch_end(self, trainer, epoch):
            trainer.request_stop("enough")

    with FitSession(SETTINGS, [StopAfterFirst()]) as fit:
        for epoch in range(5):
            fit.epoch_end(epoch, {"val_dice": 0.1})
            if fit.should_stop:
                break
    assert fit.result is not None and fit.result.status == "stopped" and fit.result.stop_reason == "enough"
    assert fit.result.epochs_completed == 1


def test_the_records_describe_what_the_loop_brought_not_the_trainers_defaults():
    monai = pytest.importorskip("monai.networks.nets")
    net = monai.UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    recorder = Recorder()
    with FitSession(
        SETTINGS,
        [recorder],
        model=net,
        optimizer=optimizer,
        scheduler=lambda opt: torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=100, power=0.9),
        params={"patch": [64, 64, 64], "note": object()},
    ):
        pass
    config = recorder.calls[1][1]["run"].config
    assert config["model"]["class"] == "monai.networks.nets.unet.UNet"
    assert config["model"]["channels"] == (4, 8) and config["model"]["out_channels"] == 2
    assert config["train"]["optimizer"]["class"] == "torch.optim.sgd.SGD"
    assert config["train"]["optimizer"]["momentum"] == 0.99 and config["train"]["optimizer"]["nesterov"] is True
    scheduler = config["train"]["scheduler"]
    assert scheduler["class"] == "torch.optim.lr_scheduler.PolynomialLR" and scheduler["power"] == 0.9
    assert "<lambda>" in scheduler["factory"]
    assert config["patch"] == (64, 64, 64) and config["note"].startswith("<object object")
    for trainer_setting in ("name", "width", "depth", "factory", "kwargs"):
        assert trainer_setting not in config["model"]
    assert "data" not in config and "infer" not in config and "lr" not in config["train"]
    assert recorder.calls[1][1]["run"].spatial_dims == 3


def test_export_writes_a_checked_onnx_model_and_leaves_the_model_as_it_was(tmp_path):
    model = tiny_model()
    torch.save({"model": {k: torch.zeros_like(v) for k, v in model.state_dict().items()}}, "zeros.pt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = Recorder()
    with FitSession(SETTINGS, [recorder], model=model, run_name="hand") as fit:
        fit.epoch_end(0, {"val_dice": 0.5})
        info = fit.export(torch.randn(1, 1, 16, 16), weights="zeros.pt")
    assert info is not None and info.parity_ok and info.path.endswith("exports/hand.onnx")
    assert (tmp_path / "exports" / "hand.onnx").is_file()
    assert "model_exported" in recorder.names() and fit.result is not None and fit.result.export == info
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "call, says",
    [
        (lambda fit: fit.epoch_end(0, {"val_dice": "high"}), "metric 'val_dice' is a str: pass a number"),
        (lambda fit: fit.epoch_end(-1, {}), "pass the epoch's 0-based index"),
        (lambda fit: fit.epoch_end(0, [0.5]), "pass a dict of metric name -> number"),
        (lambda fit: fit.checkpoint_saved("missing.pt"), "no such file: call it once the checkpoint is written"),
        (lambda fit: fit.checkpoint_saved("x", kind="newest"), "use one of best, last, epoch"),
        (lambda fit: fit.export("not a tensor"), "takes one input batch tensor"),
    ],
)
def test_bad_calls_in_a_loop_say_what_to_pass(call, says):
    with pytest.raises(ConfigError, match=says), FitSession(SETTINGS, model=tiny_model()) as fit:
        call(fit)
    assert fit.result is not None and fit.result.status == "failed"


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"model": "unet"}, "model is a str: pass the torch.nn.Module you train"),
        ({"resume_state": {"epoch": 3}}, "resume_state is not what FitSession.state_dict\\(\\) returned"),
        ({"params": [1, 2]}, "params is a list: pass a dict"),
        ({"epochs": 0}, "epochs = 0: pass the number of epochs"),
        ({"run_name": ""}, "run_name = '': pass a non-empty string"),
        ({"settings": 3}, "settings is a int: pass None, a dict"),
        ({"settings": {"checkpoint": {"mode": "up"}}}, "checkpoint.mode"),
    ],
)
def test_bad_constructor_arguments_fail_before_any_hook(kwargs, says):
    recorder = Recorder()
    kwargs = {"settings": SETTINGS, **kwargs}
    with pytest.raises(ConfigError, match=says):
        FitSession(plugins=[recorder], **kwargs)
    assert "fit_start" not in recorder.names()


def test_a_missing_monitor_is_said_once_and_marks_no_best(caplog):
    with FitSession(SETTINGS) as fit:
        assert not fit.epoch_end(0, {"loss": 0.3})
        assert not fit.epoch_end(1, {"loss": 0.2})
    assert caplog.text.count("checkpoint.monitor = 'val_dice' is not among the metrics") == 1
    assert fit.result is not None and fit.result.best_epoch == -1 and math.isinf(fit.result.best_value)


def test_calls_after_the_fit_ended_say_so():
    with FitSession(SETTINGS) as fit:
        fit.epoch_end(0, {"val_dice": 0.5})
    with pytest.raises(ConfigError, match="epoch_end\\(\\) came after the fit ended: call it inside the `with"):
        fit.epoch_end(1, {"val_dice": 0.6})


def test_batch_index_counts_within_each_epoch():
    recorder = Recorder()
    with FitSession(SETTINGS, [recorder]) as fit:
        hand_loop(fit, 2, batches=3)
    steps = [kw["step"] for name, kw in recorder.calls if name == "train_batch_end"]
    assert [s.batch_index for s in steps] == [0, 1, 2, 0, 1, 2]
