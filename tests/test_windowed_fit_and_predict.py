"""Sliding-window inference inside the loop: validation metrics on blended whole images and
volumes, the ONNX parity check and its metadata, and `segtrack predict` from a checkpoint and from
ONNX giving the same masks window by window."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from segtrack import hookimpl
from segtrack.cli import main
from segtrack.errors import ConfigError
from segtrack.inference.export import read_metadata


class Batches:
    def __init__(self):
        self.batches = []

    @hookimpl
    def validation_batch_end(self, batch):
        self.batches.append(batch)


def _fit(trainer_factory, *overrides, plugins=()):
    return trainer_factory(*overrides, plugins=plugins).fit()


def test_a_window_covering_the_image_validates_like_the_whole_image(trainer_factory):
    whole = _fit(trainer_factory, "checkpoint.dir='a'", "infer.roi_size=0")
    covering = _fit(trainer_factory, "checkpoint.dir='b'", "infer.roi_size=16")
    for key in ("val_loss", "val_dice", "val_iou"):
        assert covering.final_metrics[key] == pytest.approx(whole.final_metrics[key], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_windows_smaller_than_the_image_validate_the_blended_image(trainer_factory, mode):
    recorder = Batches()
    result = _fit(
        trainer_factory, "infer.roi_size=8", "infer.overlap=0.5", f"infer.mode='{mode}'", "infer.batch_size=3",
        plugins=[recorder],
    )  # fmt: skip
    assert result.status == "completed" and np.isfinite(result.final_metrics["val_dice"])
    batches = recorder.batches
    assert batches and all(tuple(b.logits.shape[2:]) == (16, 16) for b in batches)  # whole images


def test_a_3d_fit_validates_and_exports_window_by_window(trainer_factory):
    result = trainer_factory(
        "data.dims=3",
        "data.image_size=16",
        "data.num_samples=8",
        "train.epochs=1",
        "infer.roi_size=[8, 8, 8]",
        "infer.output_device='cpu'",
        "export.enabled=true",
    ).fit()
    assert result.status == "completed" and result.export is not None and result.export.parity_ok
    metadata = read_metadata(result.export.path)
    assert metadata["infer"] == {"roi_size": [8, 8, 8], "overlap": 0.5, "mode": "gaussian", "batch_size": 4}


def test_a_window_the_model_cannot_take_is_refused_with_the_fix(trainer_factory):
    with pytest.raises(ConfigError, match=r"infer.roi_size = 5 .* divide by 2\): use 6"):
        trainer_factory("infer.roi_size=5")


def _volumes(root, count=4):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        mask = np.zeros((10, 21, 18), np.uint8)  # odd sides, larger than the window
        mask[2:7, 3 + i : 12 + i, 4:14] = 1
        image = (mask * 150 + rng.integers(0, 60, mask.shape)).astype(np.uint8)
        np.save(root / "images" / f"vol{i}.npy", image)
        tifffile.imwrite(root / "masks" / f"vol{i}.tif", mask)


def test_predict_from_checkpoint_and_onnx_with_windows_gives_the_same_masks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _volumes(tmp_path / "data")
    sets = [
        "data.source='folder'",
        "data.path='data'",
        "data.dims=3",
        "data.num_classes=2",
        "model.in_channels=1",
        "model.width=2",
        "model.depth=1",
        "train.epochs=2",
        "infer.roi_size=[8, 8, 8]",
        "plugins.autoload=false",
    ]
    flags = [a for s in sets for a in ("--set", s)]
    assert main(["train", *flags]) == 0
    assert main(["predict", "--checkpoint", "checkpoints/best.pt", "--input", "data/images", "--out", "a"]) == 0
    assert main(["predict", "--onnx", "exports/segtrack.onnx", "--input", "data/images", "--out", "b"]) == 0
    # a window given at predict time replaces the recorded one
    assert main(["predict", "--onnx", "exports/segtrack.onnx", "--input", "data/images", "--out", "c",
                 "--set", "data.dims=3", "--set", "infer.roi_size=[4, 8, 8]"]) == 0  # fmt: skip
    for i in range(4):
        by_checkpoint, by_onnx = (tifffile.imread(tmp_path / d / f"vol{i}.tif") for d in ("a", "b"))
        assert by_checkpoint.shape == (10, 21, 18)
        assert np.array_equal(by_checkpoint, by_onnx)
        assert tifffile.imread(tmp_path / "c" / f"vol{i}.tif").shape == (10, 21, 18)


def test_monais_own_inferer_plugs_into_validation(trainer_factory, settings_factory):
    monai_inferers = pytest.importorskip("monai.inferers")
    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.plugins.manager import get_plugin_manager

    overrides = ("data.dims=3", "data.image_size=16", "data.num_samples=8", "train.epochs=1")
    ours = trainer_factory(*overrides, "infer.roi_size=8", "checkpoint.dir='ours'").fit()
    settings = settings_factory(*overrides, "checkpoint.dir='monai'")
    inferer = monai_inferers.SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=4, overlap=0.5, mode="gaussian")
    manager = get_plugin_manager(settings, autoload=False, disabled=["progress"])
    theirs = SegmentationTrainer(settings, plugin_manager=manager, inferer=inferer).fit()
    assert theirs.status == "completed"
    assert theirs.final_metrics["val_dice"] == pytest.approx(ours.final_metrics["val_dice"], abs=0.02)
