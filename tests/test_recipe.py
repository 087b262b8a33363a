"""How a fit trains: losses, optimizers, schedules, warm-up, accumulation, clipping, weight
averaging, deep supervision, exact resume of every new state, and the guards against batches with
nothing to learn and against divergence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from segtrack import ModelError, hookimpl
from segtrack.errors import ConfigError, TrainingDiverged
from segtrack.loop.losses import level_weights
from testsupport.plugins import Recorder


class NoNormNet(nn.Module):
    """Two convolutions, no batch statistics: accumulation is exactly a larger batch."""

    def __init__(self, in_channels=3, num_classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, num_classes, 1))

    def forward(self, x):
        return self.body(x)


class DeepSupervisionNet(nn.Module):
    """nnU-Net style (``stacked=False``: a list, full resolution first, then 1/2 and 1/4) or
    MONAI DynUNet style (``stacked=True``: (N, S, K, ...) at full resolution) in training mode;
    one tensor in evaluation mode."""

    def __init__(self, dims=2, in_channels=3, num_classes=3, stacked=False):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.pool = nn.MaxPool2d(2) if dims == 2 else nn.MaxPool3d(2)
        self.stem = nn.Sequential(conv(in_channels, 6, 3, padding=1), nn.ReLU())
        self.heads = nn.ModuleList(conv(6, num_classes, 1) for _ in range(3))
        self.stacked = stacked

    def forward(self, x):
        features = self.stem(x)
        full = self.heads[0](features)
        if not self.training:
            return full
        half = self.heads[1](self.pool(features))
        quarter = self.heads[2](self.pool(self.pool(features)))
        if not self.stacked:
            return [full, half, quarter]
        size = full.shape[2:]
        up = [nn.functional.interpolate(t, size=size) for t in (half, quarter)]
        return torch.stack([full, *up], dim=1)


class PartlyIgnored(Dataset):
    """Stripes; every third sample's mask is ignored everywhere (value 255)."""

    def __init__(self, count=12):
        self.items = []
        for i in range(count):
            mask = np.zeros((16, 16), np.int64)
            mask[:, i % 12 : i % 12 + 4] = 1
            image = mask[None].astype(np.float32).repeat(3, 0)
            if i % 3 == 0:
                mask[:] = 255
            self.items.append((torch.from_numpy(image), torch.from_numpy(mask)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


class Trainer:
    """Builds trainers with a user model and the tiny synthetic data, autoload off."""

    def __init__(self, settings_factory):
        self.settings_factory = settings_factory

    def __call__(self, *overrides, plugins=(), **kwargs):
        from segtrack.loop.trainer import SegmentationTrainer
        from segtrack.plugins.manager import get_plugin_manager

        settings = self.settings_factory(*overrides)
        manager = get_plugin_manager(settings, plugins, autoload=False, disabled=["progress"])
        return SegmentationTrainer(settings, plugin_manager=manager, **kwargs)


@pytest.fixture
def make(settings_factory):
    return Trainer(settings_factory)


def _epoch_metrics(recorder, key):
    return [kw["epoch"].metrics[key] for name, kw in recorder.calls if name == "epoch_end"]


@pytest.mark.parametrize("loss", ["ce", "dice", "ce_dice", "focal_dice"])
def test_each_builtin_loss_trains(make, loss):
    result = make(f"train.loss='{loss}'", "train.class_weights=[0.2, 1.0, 2.0]", "train.epochs=1").fit()
    assert result.status == "completed" and math.isfinite(result.final_metrics["train_loss"])


def test_a_user_loss_trains_validates_and_is_recorded(make):
    calls = []

    def my_loss(logits, target):
        calls.append(tuple(target.shape))
        assert target.dtype == torch.int64 and int(target.min()) >= -1
        return nn.functional.cross_entropy(logits, target, ignore_index=-1)

    recorder = Recorder()
    result = make("train.epochs=1", plugins=[recorder], loss=my_loss).fit()
    assert result.status == "completed" and len(calls) >= 4  # training batches and validation batches
    run = next(kw["run"] for name, kw in recorder.calls if name == "fit_start")
    loss = run.config["train"]["loss"]
    assert loss["function"].endswith("my_loss")  # the user's loss, not train.loss = "ce_dice"
    assert not {"class_weights", "focal_gamma", "dice_weight"} & set(run.config["train"])


def test_sgd_nesterov_poly_follows_the_formula(make, tmp_path):
    recorder = Recorder()
    trainer = make(
        "train.epochs=5",
        "train.optimizer='sgd'",
        "train.momentum=0.99",
        "train.nesterov=true",
        "train.scheduler='poly'",
        "train.lr=0.01",
        plugins=[recorder],
    )
    trainer.fit()
    expected = [0.01 * (1 - e / 5) ** 0.9 for e in range(5)]
    assert _epoch_metrics(recorder, "lr") == pytest.approx(expected, rel=1e-9)
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]
    assert saved["momentum"] == 0.99 and saved["nesterov"] is True


def test_warmup_then_constant_and_per_step_schedules(make):
    recorder = Recorder()
    make("train.epochs=4", "train.scheduler='constant'", "train.warmup_epochs=2", plugins=[recorder]).fit()
    assert _epoch_metrics(recorder, "lr") == pytest.approx([0.01 * 0.01, 0.01 * 0.505, 0.01, 0.01])

    recorder = Recorder()
    make("train.epochs=2", "train.scheduler='step'", "train.scheduler_interval='step'", "train.step_size=2",
         "train.step_gamma=0.5", plugins=[recorder]).fit()  # fmt: skip
    lrs = [kw["step"].lr for name, kw in recorder.calls if name == "train_batch_end"]
    assert lrs == pytest.approx([0.01 * 0.5 ** ((i + 1) // 2) for i in range(len(lrs))])


def test_accumulation_equals_the_larger_batch(make):
    def fit(*overrides):
        torch.manual_seed(0)
        trainer = make("train.epochs=1", "train.loss='ce'", "data.num_samples=32", *overrides, model=NoNormNet())
        trainer.fit()
        return {k: v.clone() for k, v in trainer.model.state_dict().items()}

    big = fit("train.batch_size=8")
    accumulated = fit("train.batch_size=4", "train.accumulate=2")
    small = fit("train.batch_size=4")
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(small[k], big[k]) for k in big)


def test_clipping_bounds_the_update(make):
    torch.manual_seed(0)
    model = NoNormNet()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer = make(
        "train.epochs=1",
        "train.optimizer='sgd'",
        "train.momentum=0.0",
        "train.weight_decay=0",
        "train.lr=1.0",
        "train.scheduler='constant'",
        "train.batch_size=12",
        "train.clip_grad_norm=0.01",
        model=model,
    )
    trainer.fit()  # 12 training samples: one optimizer step
    after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert 0 < float((after - before).norm()) <= 0.01 * (1 + 1e-4)


def test_weight_average_is_validated_saved_and_exported(make, tmp_path):
    import onnxruntime

    trainer = make("train.epochs=2", "train.ema=0.5", "export.enabled=true")
    result = trainer.fit()
    payload = torch.load(result.best_checkpoint, weights_only=True)
    assert "training_model" in payload
    differ = [
        k
        for k, v in payload["model"].items()
        if v.is_floating_point() and not torch.equal(v, payload["training_model"][k])
    ]
    assert differ  # the average is not the trained weights

    from segtrack.models.unet import build_unet

    model = build_unet(3, 3, dims=2, width=4, depth=1)
    model.load_state_dict(payload["model"])
    model.eval()
    x = torch.randn(1, 3, 16, 16)
    session = onnxruntime.InferenceSession(result.export.path)
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(onnx_out - model(x).numpy()).max() < 1e-4


@pytest.mark.parametrize("stacked", [False, True], ids=["list", "stacked"])
@pytest.mark.parametrize("dims", [2, 3])
def test_deep_supervision_trains_on_every_output(make, stacked, dims):
    from segtrack.loop.losses import BuiltinLoss

    seen = []
    builtin = BuiltinLoss("ce_dice", 1.0, [], 2.0)

    def recording_loss(logits, target):
        seen.append(tuple(logits.shape[2:]))
        return builtin(logits, target)

    extra = ["data.dims=3", "data.image_size=8", "data.num_samples=8"] if dims == 3 else []
    model = DeepSupervisionNet(dims=dims, stacked=stacked)
    result = make("train.epochs=1", "train.deep_supervision=true", *extra, model=model, loss=recording_loss).fit()
    assert result.status == "completed"
    side = 8 if dims == 3 else 16
    full = (side,) * dims
    if stacked:
        assert seen[:2] == [full, full]  # two levels weighted, the coarsest dropped
    else:
        assert seen[:2] == [full, (side // 2,) * dims]
    # the dropped level still got a (zero) gradient: DDP's sync needs every parameter
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_stacked_outputs_without_deep_supervision_say_what_to_set(make):
    with pytest.raises(ModelError, match="train.deep_supervision = true"):
        make("train.epochs=1", model=DeepSupervisionNet(stacked=True)).fit()


def test_level_weights_halve_and_drop_the_coarsest():
    assert level_weights(3, True) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert level_weights(3, False) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert level_weights(1, True) == [1.0]


class StopAfter:
    def __init__(self, epochs):
        self.epochs = epochs

    @hookimpl
    def epoch_end(self, trainer, epoch):
        if epoch.epoch + 1 == self.epochs:
            trainer.request_stop("test")


def test_exact_resume_with_every_new_state(make, tmp_path):
    recipe = [
        "train.optimizer='sgd'",
        "train.momentum=0.9",
        "train.nesterov=true",
        "train.scheduler='poly'",
        "train.warmup_epochs=1",
        "train.scheduler_interval='step'",
        "train.accumulate=2",
        "train.clip_grad_norm=1.0",
        "train.ema=0.9",
        "train.deep_supervision=true",
        "train.epochs=3",
    ]
    torch.manual_seed(0)
    straight = make(*recipe, "checkpoint.dir='straight'", model=DeepSupervisionNet()).fit()
    torch.manual_seed(0)
    stopped = make(*recipe, "checkpoint.dir='split'", model=DeepSupervisionNet(), plugins=[StopAfter(2)]).fit()
    assert stopped.status == "stopped" and stopped.epochs_completed == 2
    resumed = make(*recipe, "checkpoint.dir='split'", model=DeepSupervisionNet()).fit(resume="auto")
    a = torch.load(straight.last_checkpoint, weights_only=True)
    b = torch.load(resumed.last_checkpoint, weights_only=True)
    for key in ("model", "training_model"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]


def test_batches_with_no_labelled_pixel_keep_the_loss_finite(make):
    result = make(
        "train.epochs=1", "train.batch_size=1", "data.ignore_index=255", model=NoNormNet(), train_data=PartlyIgnored()
    ).fit()
    assert result.status == "completed" and math.isfinite(result.final_metrics["train_loss"])


def test_divergence_stops_the_fit_with_one_sentence(make, tmp_path):
    recorder = Recorder()
    trainer = make(
        "train.epochs=3",
        "train.optimizer='sgd'",
        "train.momentum=0.0",
        "train.lr=1e6",
        "train.scheduler='constant'",
        "train.loss='ce'",
        model=NoNormNet(),
        plugins=[recorder],
    )
    with pytest.raises(TrainingDiverged, match=r"the fit diverged; lower train.lr") as caught:
        trainer.fit()
    assert "\n" not in str(caught.value) and "at epoch" in str(caught.value)
    result = next(kw["result"] for name, kw in recorder.calls if name == "fit_end")
    assert result.status == "failed" and "diverged" in result.error


class Precision:
    """A plugin metric: foreground precision over the whole validation set."""

    def __init__(self, fail_at_epoch=None):
        self.tp = self.fp = 0
        self.fail_at_epoch = fail_at_epoch

    @hookimpl
    def validation_batch_end(self, batch):
        fg = batch.predictions > 0
        self.tp += int((fg & (batch.masks == batch.predictions)).sum())
        self.fp += int((fg & (batch.masks != batch.predictions)).sum())

    @hookimpl
    def validation_metrics(self, result):
        value = self.tp / max(1, self.tp + self.fp)
        self.tp = self.fp = 0
        if result.epoch == self.fail_at_epoch:
            raise RuntimeError("flaky metric")
        return {"val_precision": value}


def test_a_failing_monitored_plugin_metric_does_not_stop_the_fit(make):
    result = make("train.epochs=3", "checkpoint.monitor='val_precision'", plugins=[Precision(fail_at_epoch=1)]).fit()
    assert result.status == "completed" and result.epochs_completed == 3
    assert result.best_epoch in (0, 2) and result.plugin_failures


def test_cross_validation_summarises_a_per_class_monitor(make):
    result = make("train.epochs=1", "checkpoint.monitor='val_dice_1'").cv(folds=2)
    assert {"val_dice_1", "val_dice", "train_loss"} <= set(result.summary)
    assert set(result.summary["val_dice_1"]) == {"mean", "std", "min", "max"}


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.optimizer='lion'", "train.optimizer"),
        ("train.accumulate=0", "train.accumulate"),
        ("train.class_weights=[1.0]", "train.class_weights has 1 values"),
        ("train.nesterov=true", "train.nesterov = true needs train.momentum"),
        ("train.ema=1.5", "train.ema"),
    ],
)
def test_bad_recipe_settings_name_the_key(settings_factory, override, words):
    extra = ["train.momentum=0"] if "nesterov" in override else []
    with pytest.raises(ConfigError, match=words):
        settings_factory(override, *extra)


def test_a_factory_returning_the_wrong_thing_is_one_sentence(make):
    with pytest.raises(ConfigError, match="optimizer factory returned str"):
        make("train.epochs=1", optimizer=lambda params: "sgd").fit()
    with pytest.raises(ConfigError, match="loss is a str"):
        make("train.epochs=1", loss="dice")


def test_a_plateau_scheduler_stepped_per_step_is_refused(make):
    def plateau(optimizer):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)

    with pytest.raises(ConfigError, match='scheduler_interval = "epoch"'):
        make("train.epochs=1", "train.scheduler_interval='step'", scheduler=plateau).fit()
    assert make("train.epochs=2", scheduler=plateau).fit().status == "completed"  # per epoch, on the monitor


def test_a_resume_with_more_epochs_follows_the_new_schedule(make):
    recorder = Recorder()
    make("train.epochs=2", "train.scheduler='poly'", "train.lr=0.01").fit()
    make("train.epochs=4", "train.scheduler='poly'", "train.lr=0.01", plugins=[recorder]).fit(resume="auto")
    assert _epoch_metrics(recorder, "lr") == pytest.approx([0.01 * (1 - e / 4) ** 0.9 for e in (2, 3)])


def test_a_plain_dict_names_only_what_it_changes_and_keeps_kwargs_names(tmp_path):
    from segtrack.config.settings import resolve_settings
    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.plugins.manager import get_plugin_manager

    given = {"train": {"epochs": 1}, "model": {"kwargs": {"encoderName": "x"}}, "plugins": {"autoload": False}}
    settings = resolve_settings(given, get_plugin_manager(given, autoload=False))
    assert settings["train"]["epochs"] == 1 and settings["train"]["lr"] == 0.003
    assert dict(settings["model"]["kwargs"]) == {"encoderName": "x"}
    trainer = SegmentationTrainer(
        {"train": {"epochs": 1}, "export": {"enabled": False}, "plugins": {"autoload": False}}
    )
    assert trainer.fit().status == "completed"
