"""A user's own model and dataset through the loop: output forms, sample forms, 2D and 3D,
DataLoaders, cross-validation, resume, ignore_index, plugin metrics, and the errors a user can cause."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segtrack import DataError, ModelError, hookimpl
from segtrack.config.settings import load_settings
from segtrack.errors import ConfigError
from segtrack.loop.trainer import SegmentationTrainer
from segtrack.plugins.manager import get_plugin_manager
from testsupport.plugins import Recorder

FAST = ["train.epochs=2", "train.batch_size=4", "train.lr=0.01", "export.enabled=false"]


class DictOutputNet(nn.Module):
    """torchvision-style: returns {"out": logits, "aux": ...}; not our UNet, any size works."""

    def __init__(self, in_channels=1, num_classes=3, dims=2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.body = nn.Sequential(conv(in_channels, 6, 3, padding=1), nn.ReLU(), conv(6, 6, 3, padding=1), nn.ReLU())
        self.head = conv(6, num_classes, 1)

    def forward(self, x):
        features = self.body(x)
        return {"out": self.head(features), "aux": features.mean()}


class TupleOutputNet(DictOutputNet):
    def forward(self, x):
        return (self.head(self.body(x)), None)


class MonaiStyleDataset(Dataset):
    """Dict samples with a channel-first "label" of one channel, like MONAI's transforms give."""

    def __init__(self, count=14, size=(20, 28), dims=2, ignore=None, seed=0):
        rng = np.random.default_rng(seed)
        shape = size if dims == 2 else (12, *size)
        self.items = []
        for _ in range(count):
            label = np.zeros(shape, dtype=np.uint8)
            label[..., 3:9, 4:12] = 1
            label[..., 11:17, 15:25] = 2
            image = (label / 2.0 + rng.normal(0, 0.1, shape)).astype(np.float32)[None]
            if ignore is not None:
                label[..., :2, :] = ignore
            self.items.append(
                {"image": torch.from_numpy(image), "label": torch.from_numpy(label[None].astype(np.float32))}
            )

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def _trainer(tmp_path, *overrides, model=None, train_data=None, val_data=None, plugins=()):
    settings = load_settings(None, None, [*FAST, *overrides], project_dir=tmp_path)
    manager = get_plugin_manager(settings, plugins, autoload=False, disabled=["progress"])
    return SegmentationTrainer(settings, model=model, train_data=train_data, val_data=val_data, plugin_manager=manager)


def _in_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_dict_output_model_on_a_monai_style_dataset_trains_and_exports(tmp_path, monkeypatch):
    _in_dir(tmp_path, monkeypatch)
    recorder = Recorder()
    torch.manual_seed(0)
    model = DictOutputNet()
    trainer = _trainer(
        tmp_path,
        "export.enabled=true",
        "data.class_names=['bg','cell','nucleus']",
        model=model,
        train_data=MonaiStyleDataset(),
        plugins=[recorder],
    )
    result = trainer.fit()
    assert result.status == "completed" and result.epochs_completed == 2
    assert trainer.model is model  # the user's module, trained in place
    run = next(kw["run"] for name, kw in recorder.calls if name == "fit_start")
    assert run.model_name.endswith("DictOutputNet") and run.spatial_dims == 2 and run.batches_per_epoch == 3
    # a Dataset without sample_digest or .data is hashed as epoch 0 loads it: known at its epoch_end
    assert run.num_train + run.num_val == 14 and run.val_sha256 == ""
    metrics = result.final_metrics
    assert {"val_dice_cell", "val_dice_nucleus", "val_iou_bg"} <= set(metrics)
    export = result.export
    assert export is not None and export.parity_ok and export.input_shape == (4, 1, 20, 28)
    session = onnxruntime.InferenceSession(export.path, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(1).random((2, 1, 33, 17), dtype=np.float32)  # any other size
    (onnx_out,) = session.run(None, {"x": batch})
    best = DictOutputNet()
    best.load_state_dict(torch.load(result.best_checkpoint, weights_only=True)["model"])  # the export is the best epoch
    with torch.no_grad():
        assert np.abs(onnx_out - best.eval()(torch.from_numpy(batch))["out"].numpy()).max() < 1e-4


def test_golden_hook_sequence_is_the_same_for_a_user_model(tmp_path, monkeypatch, trainer_factory):
    _in_dir(tmp_path, monkeypatch)
    builtin, user = Recorder(), Recorder()
    same_best = ["checkpoint.monitor=lr", "checkpoint.mode=min"]  # cosine lr: every epoch is best, in both fits
    trainer_factory(*same_best, plugins=[builtin]).fit()
    _trainer(
        tmp_path,
        *same_best,
        "checkpoint.dir=user-ckpt",
        model=TupleOutputNet(),
        train_data=MonaiStyleDataset(count=16),
        plugins=[user],
    ).fit()
    assert user.names() == builtin.names()


def test_3d_builtin_fit_and_3d_export(tmp_path, monkeypatch):
    _in_dir(tmp_path, monkeypatch)
    result = _trainer(
        tmp_path,
        "data.dims=3",
        "data.image_size=16",
        "data.num_samples=10",
        "model.width=2",
        "model.depth=1",
        "export.enabled=true",
    ).fit()
    assert result.status == "completed" and 0 <= result.final_metrics["val_dice"] <= 1
    assert result.export.parity_ok and result.export.input_shape[1:] == (3, 16, 16, 16)
    session = onnxruntime.InferenceSession(result.export.path, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.zeros((1, 3, 8, 12, 20), dtype=np.float32)})  # other volume size
    assert out.shape == (1, 3, 8, 12, 20)


def test_3d_user_dataset_with_a_dataloader_passed_directly(tmp_path, monkeypatch):
    _in_dir(tmp_path, monkeypatch)
    train = DataLoader(MonaiStyleDataset(count=6, dims=3, size=(16, 28)), batch_size=2, shuffle=True)
    val = DataLoader(MonaiStyleDataset(count=3, dims=3, size=(16, 28), seed=1), batch_size=3)
    recorder = Recorder()
    result = _trainer(
        tmp_path, "data.dims=3", model=DictOutputNet(dims=3), train_data=train, val_data=val, plugins=[recorder]
    ).fit()
    assert result.status == "completed"
    steps = [kw["step"] for name, kw in recorder.calls if name == "train_batch_end"]
    assert [s.batch_size for s in steps] == [2, 2, 2] * 2  # the user's loader, as given
    validation = next(kw["result"] for name, kw in recorder.calls if name == "validation_end")
    assert validation.num_samples == 3 and validation.samples[0].prediction.shape == (12, 16, 28)


def test_cv_over_train_data_starts_every_fold_from_the_same_weights(tmp_path, monkeypatch):
    _in_dir(tmp_path, monkeypatch)
    model = DictOutputNet()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    first_weights = []

    class FirstStep:
        @hookimpl
        def fit_start(self, trainer):
            first_weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    outcome = _trainer(tmp_path, model=model, train_data=MonaiStyleDataset(count=9), plugins=[FirstStep()]).cv(folds=3)
    assert [f.status for f in outcome.folds] == ["completed"] * 3
    for weights in first_weights:
        assert all(torch.equal(weights[k], initial[k]) for k in initial)
    assert not all(torch.equal(model.state_dict()[k], initial[k]) for k in initial)  # it did train


def test_resumed_user_model_fit_ends_with_the_same_weights(tmp_path, monkeypatch):
    _in_dir(tmp_path, monkeypatch)
    data = MonaiStyleDataset(count=12)
    torch.manual_seed(3)
    straight_model = DictOutputNet()
    start = {k: v.clone() for k, v in straight_model.state_dict().items()}
    loader = DataLoader(data, batch_size=3, shuffle=True)
    val = DataLoader(MonaiStyleDataset(count=4, seed=2), batch_size=4)
    straight = _trainer(
        tmp_path, "train.epochs=3", "checkpoint.dir=a", model=straight_model, train_data=loader, val_data=val
    ).fit()

    class StopAfterFirst:
        @hookimpl
        def epoch_end(self, trainer, epoch):
            trainer.request_stop("test")

    resumed_model = DictOutputNet()
    resumed_model.load_state_dict(start)
    _trainer(
        tmp_path,
        "train.epochs=3",
        "checkpoint.dir=b",
        model=resumed_model,
        train_data=loader,
        val_data=val,
        plugins=[StopAfterFirst()],
    ).fit()
    other = DictOutputNet()
    other.load_state_dict(start)
    resumed = _trainer(
        tmp_path, "train.epochs=3", "checkpoint.dir=b", model=other, train_data=loader, val_data=val
    ).fit(resume="auto")
    assert resumed.status == "completed" and resumed.epochs_completed == 3
    a = torch.load(straight.last_checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ignore_index_is_left_out_of_loss_and_metrics(tmp_path, monkeypatch):
    _in_dir(tmp_path, monkeypatch)
    result = _trainer(
        tmp_path, "data.ignore_index=255", model=DictOutputNet(), train_data=MonaiStyleDataset(ignore=255)
    ).fit()
    assert result.status == "completed" and np.isfinite(result.final_metrics["val_loss"])
    from segtrack.loop.losses import ce_dice
    from segtrack.loop.metrics import ConfusionCounts

    truth = torch.tensor([[0, 1, -1, -1]])
    logits = torch.tensor([[[9.0, -9, 9, 9], [-9.0, 9, -9, -9]]])  # wrong only where ignored
    counts = ConfusionCounts(2, torch.device("cpu"))
    counts.update(logits.argmax(1), truth)
    assert counts.mean_foreground() == (1.0, 1.0)
    assert ce_dice(logits, truth, 1.0) < 1e-3


def test_plugins_contribute_metrics_and_one_can_be_monitored(tmp_path, monkeypatch, caplog):
    _in_dir(tmp_path, monkeypatch)

    class BoundaryMetric:
        name = "boundary"

        def __init__(self):
            self.pixels = 0

        @hookimpl
        def validation_batch_end(self, batch):
            self.pixels += int(batch.predictions.numel())

        @hookimpl
        def validation_metrics(self, result):
            value, self.pixels = float(self.pixels), 0
            return {"val_pixels_seen": value}

    class BadMetric:
        name = "bad"

        @hookimpl
        def validation_metrics(self):
            return {"val_dice": 1.0, "text": "high"}  # a taken name, and not a number

    recorder = Recorder()
    result = _trainer(
        tmp_path,
        "checkpoint.monitor=val_pixels_seen",
        "checkpoint.mode=min",
        train_data=MonaiStyleDataset(count=8),
        model=DictOutputNet(),
        plugins=[BoundaryMetric(), BadMetric(), recorder],
    ).fit()
    epochs = [kw["epoch"] for name, kw in recorder.calls if name == "epoch_end"]
    assert [e.metrics["val_pixels_seen"] for e in epochs] == [2 * 20 * 28.0] * 2
    assert epochs[0].monitor == "val_pixels_seen" and result.best_epoch == 0
    assert [(f.plugin, f.hook) for f in result.plugin_failures] == [("bad", "validation_metrics")]
    assert "text" not in epochs[0].metrics and epochs[0].metrics["val_dice"] < 1.0


def test_a_model_that_cannot_be_exported_warns_once_and_the_fit_succeeds(tmp_path, monkeypatch, caplog):
    _in_dir(tmp_path, monkeypatch)

    class DataDependent(DictOutputNet):
        def forward(self, x):
            out = super().forward(x)["out"]
            if float(out.detach().mean()) > 1e9:  # data-dependent control flow: torch.export refuses it
                return out * 2
            return out

    with caplog.at_level(logging.WARNING, logger="segtrack.trainer"):
        result = _trainer(tmp_path, "export.enabled=true", model=DataDependent(), train_data=MonaiStyleDataset()).fit()
    assert result.status == "completed" and result.export is None and result.export_error
    warnings = [r for r in caplog.records if "ONNX export skipped" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()


class StringModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return "logits"


class PairsDataset(Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


def _pairs(image_shape=(1, 16, 16), mask_shape=(16, 16), mask_value=1, count=6):
    return PairsDataset([(torch.rand(image_shape), torch.full(mask_shape, mask_value)) for _ in range(count)])


BAD = [
    (
        "output channels",
        dict(model=DictOutputNet(num_classes=5), train_data=_pairs()),
        ModelError,
        ["5 channels", "data.num_classes = 3"],
    ),
    (
        "class id too large",
        dict(model=DictOutputNet(), train_data=_pairs(mask_value=7)),
        DataError,
        ["class ids [7]", "0..2", "data.ignore_index"],
    ),
    (
        "sizes differ",
        dict(model=DictOutputNet(), train_data=_pairs(mask_shape=(16, 12))),
        DataError,
        ["16x16", "16x12"],
    ),
    (
        "neither tuple nor dict",
        dict(model=DictOutputNet(), train_data=PairsDataset([torch.zeros(1, 8, 8)] * 4)),
        DataError,
        ["(image, mask) pair", "Tensor"],
    ),
    ("string output", dict(model=StringModel(), train_data=_pairs()), ModelError, ["returned str", "forward()"]),
    ("val without train", dict(model=DictOutputNet(), val_data=_pairs()), ConfigError, ["val_data", "train_data"]),
    ("not a module", dict(model="resnet", train_data=_pairs()), ConfigError, ["torch.nn.Module"]),
    (
        "3D data with dims 2",
        dict(model=DictOutputNet(dims=3), train_data=_pairs((1, 8, 16, 16), (8, 16, 16))),
        DataError,
        ["data.dims = 2"],
    ),
]


@pytest.mark.parametrize("case, kwargs, error, fragments", BAD, ids=[c[0] for c in BAD])
def test_bad_user_model_or_data_is_a_clear_error_and_writes_nothing(
    case, kwargs, error, fragments, tmp_path, monkeypatch
):
    _in_dir(tmp_path, monkeypatch)
    recorder = Recorder()
    model = kwargs.get("model")
    before = {k: v.clone() for k, v in model.state_dict().items()} if isinstance(model, nn.Module) else {}
    with pytest.raises(error) as info:
        _trainer(tmp_path, **kwargs, plugins=[recorder]).fit()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    assert not [p for p in tmp_path.rglob("*") if p.is_file() or p.is_dir()], "nothing may be written"
    assert "fit_start" not in recorder.names()
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)  # no optimizer step taken


def test_the_records_of_a_fit_with_the_users_parts_describe_them_not_the_settings_they_replaced(tmp_path, monkeypatch):
    _in_dir(tmp_path, monkeypatch)
    recorder = Recorder()
    trainer = SegmentationTrainer(
        load_settings(None, None, [*FAST, "train.epochs=1"], project_dir=tmp_path),
        model=DictOutputNet(num_classes=3),
        train_data=MonaiStyleDataset(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.99, nesterov=True),
        scheduler=lambda opt: torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10, power=0.9),
        plugin_manager=get_plugin_manager(None, [recorder], autoload=False, disabled=["progress"]),
    )
    trainer.fit()
    config = next(kw["run"] for name, kw in recorder.calls if name == "fit_start").config
    assert config["model"]["class"].endswith("DictOutputNet") and config["model"]["parameters"] > 0
    assert not {"name", "width", "depth", "in_channels"} & set(config["model"])
    assert config["data"]["train"]["class"].endswith("MonaiStyleDataset") and config["data"]["train"]["samples"] == 14
    assert not {"source", "image_size", "num_samples", "path"} & set(config["data"])
    optimizer, scheduler = config["train"]["optimizer"], config["train"]["scheduler"]
    assert optimizer["class"] == "torch.optim.sgd.SGD" and optimizer["momentum"] == 0.99 and optimizer["lr"] == 0.01
    assert scheduler["class"] == "torch.optim.lr_scheduler.PolynomialLR" and scheduler["power"] == 0.9
    assert not {"lr", "momentum", "poly_power", "warmup_epochs", "augment"} & set(config["train"])
    assert config["train"]["epochs"] == 1 and config["data"]["num_classes"] == 3  # settings the fit did use
