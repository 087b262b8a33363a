"""Hardening: onnxruntime's telemetry off before it can load, the ONNX metadata of a model passed in
code, onnxruntime's refusals and a killed data-loading worker as one sentence each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segtrack import DataError, hookimpl
from segtrack.cli import main
from segtrack.errors import ConfigError
from testsupport.plugins import Recorder


@pytest.mark.parametrize("given, expected", [(None, "1"), ("0", "0")])
def test_onnxruntime_telemetry_is_off_unless_the_user_says_otherwise(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    if given is not None:
        env["ORT_DISABLE_TELEMETRY"] = given
    out = subprocess.run(
        [sys.executable, "-c", "import os, segtrack; print(os.environ['ORT_DISABLE_TELEMETRY'])"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == expected


class OneChannelNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))

    def forward(self, x):
        return self.body(x)


def _grey_folder(root: Path, count: int = 8) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        mask = np.zeros((24, 20), np.uint8)
        mask[4 + i % 5 : 14 + i % 5, 3:12] = 1
        Image.fromarray((mask * 180 + 30).astype(np.uint8)).save(root / "images" / f"g{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"g{i}.png")


class GreyStripes(torch.utils.data.Dataset):
    """One-channel images, while model.in_channels stays at its default of 3."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        mask = torch.zeros(24, 20, dtype=torch.int64)
        mask[4 + index % 5 : 14 + index % 5, 3:12] = 1
        return (mask[None].float() * 0.7 + 0.1, mask)


def test_predict_with_the_onnx_of_a_model_passed_in_code(settings_factory, tmp_path):
    from segtrack.inference.predict import from_onnx
    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.plugins.manager import get_plugin_manager

    _grey_folder(tmp_path / "data")
    settings = settings_factory("data.num_classes=2", "export.enabled=true", "train.epochs=1")
    manager = get_plugin_manager(settings, autoload=False, disabled=["progress"])
    trainer = SegmentationTrainer(settings, plugin_manager=manager, model=OneChannelNet(), train_data=GreyStripes())
    result = trainer.fit()
    assert result.export is not None
    args = ["predict", "--onnx", result.export.path, "--input", "data/images", "--out", "masks"]
    assert main([*args, "--set", "plugins.autoload=false"]) == 0  # fed 1 channel, as the model takes
    assert len(list((tmp_path / "masks").glob("*.png"))) == 8
    with pytest.raises(ConfigError, match="onnxruntime refused an input of shape"):
        from_onnx(Path(result.export.path)).run(np.zeros((1, 3, 16, 16), np.float32))


class KillAWorker:
    """Kills one data-loading worker (a child process of this test) in the second epoch."""

    @hookimpl
    def train_batch_end(self, step):
        if step.epoch == 1 and step.batch_index == 0:
            children = [int(p) for p in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()]
            os.kill(children[0], signal.SIGKILL)


def test_a_killed_data_loading_worker_is_one_sentence_and_the_checkpoints_stay(settings_factory, tmp_path):
    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.plugins.manager import get_plugin_manager
    from segtrack.runtime import checkpoint

    _grey_folder(tmp_path / "data", count=16)
    settings = settings_factory(
        "data.source='folder'", "data.path='data'", "data.num_classes=2", "model.in_channels=1",
        "train.num_workers=2", "train.batch_size=2", "train.epochs=3",
    )  # fmt: skip
    recorder = Recorder()
    manager = get_plugin_manager(settings, [recorder, KillAWorker()], autoload=False, disabled=["progress"])
    with pytest.raises(DataError, match=r"a data-loading worker died .* --resume auto") as caught:
        SegmentationTrainer(settings, plugin_manager=manager).fit()
    assert "\n" not in str(caught.value)
    # torch raises the worker's death from its SIGCHLD handler wherever the main thread is, at times
    # inside fit_end itself; when fit_end got to run, it says the fit failed
    ends = [kw["result"] for name, kw in recorder.calls if name == "fit_end"]
    assert all(result.status == "failed" for result in ends)
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt", None)["epoch"] == 0
    assert torch.is_tensor(next(iter(checkpoint.load(tmp_path / "checkpoints" / "last.pt", None)["model"].values())))


def test_a_model_that_cannot_take_the_data_is_one_sentence_before_anything_is_written(settings_factory, tmp_path):
    from segtrack import ModelError
    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.plugins.manager import get_plugin_manager

    _grey_folder(tmp_path / "data")  # read as 3 channels (model.in_channels = 3) for a 1-channel model
    settings = settings_factory("data.source='folder'", "data.path='data'", "data.num_classes=2")
    manager = get_plugin_manager(settings, autoload=False, disabled=["progress"])
    with pytest.raises(ModelError, match=r"fails on the first validation batch .* model.in_channels"):
        SegmentationTrainer(settings, plugin_manager=manager, model=OneChannelNet()).fit()
    assert not (tmp_path / "checkpoints").exists()
