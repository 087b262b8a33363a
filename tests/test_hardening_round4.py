"""Hardening, round 4: predict checks its windows and inputs against the model it loads (not the
command line's defaults), settings that would silently do less than asked are refused or said, and
the skipped, the resumed-past-its-end and the one-output cases speak up. Each through the CLI, as a
user meets it: one sentence, exit 2, nothing written."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segtrack.cli import main

TINY = ["train.epochs=1", "train.batch_size=4", "data.num_samples=8", "data.image_size=16", "model.width=4"]


def _sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def _train(*extra: str) -> int:
    return main(["train", *_sets(*TINY, "plugins.autoload=false", *extra)])


def _rgb_pngs(folder: Path, count: int = 2, size: int = 16) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


@pytest.fixture
def checkpoint_2d(tmp_path) -> Path:
    assert _train("model.depth=1", "export.enabled=false") == 0
    return tmp_path / "checkpoints" / "best.pt"


@pytest.fixture
def checkpoint_3d(tmp_path) -> Path:
    extra = ["data.dims=3", "data.image_size=8", "model.depth=1", "model.in_channels=1", "export.enabled=false"]
    assert _train(*extra, "checkpoint.dir='ckpt3d'") == 0
    return tmp_path / "ckpt3d" / "best.pt"


def test_predict_refuses_a_window_the_model_cannot_take_before_reading_anything(checkpoint_2d, tmp_path, capsys):
    images = _rgb_pngs(tmp_path / "in")
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(checkpoint_2d), "--input", str(images), "--out", "out",
                 *_sets("infer.roi_size=7")])  # fmt: skip
    err = _error(capsys)
    assert code == 2 and "infer.roi_size = 7 has sides" in err and "must divide by 2" in err and "use 8" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_predict_takes_the_dimensionality_from_the_model(checkpoint_3d, tmp_path, capsys):
    """A 3D checkpoint: the per-axis window needs no data.dims; RGB PNGs are refused, not read as volumes."""
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    np.save(volumes / "v0.npy", np.random.default_rng(1).random((12, 10, 9), dtype=np.float32))
    (volumes / "notes.txt").write_text("not an image")
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(checkpoint_3d), "--input", str(volumes), "--out", "masks",
                 *_sets("infer.roi_size=[8,8,8]")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    written = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert written == ["v0.tif"]
    assert "skipped 1 file(s) that are not images" in captured.err and "notes.txt" in captured.err

    pngs = _rgb_pngs(tmp_path / "pngs")
    code = main(["predict", "--checkpoint", str(checkpoint_3d), "--input", str(pngs), "--out", "bad"])
    err = _error(capsys)
    assert code == 2 and "2D images, but" in err and "segments 3D volumes" in err and not (tmp_path / "bad").exists()


def test_a_2d_model_given_volumes_is_refused_without_pointing_at_data_dims(checkpoint_2d, tmp_path, capsys):
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    np.save(volumes / "v0.npy", np.zeros((6, 16, 16, 5), np.float32))
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(checkpoint_2d), "--input", str(volumes), "--out", "out"])
    err = _error(capsys)
    assert code == 2 and "segments 2D images" in err and "data.dims" not in err
    assert not (tmp_path / "out").exists()


def test_predict_with_onnx_honours_a_window_setting_given_for_it(tmp_path, capsys):
    """The export recorded windows; --set infer.roi_size=0 on the command line means the whole image."""
    assert _train("model.depth=1", "infer.roi_size=8") == 0
    images = _rgb_pngs(tmp_path / "in", size=24)
    onnx = next((tmp_path / "exports").glob("*.onnx"))
    assert main(["predict", "--onnx", str(onnx), "--input", str(images), "--out", "windowed"]) == 0
    assert main(["predict", "--onnx", str(onnx), "--input", str(images), "--out", "whole",
                 *_sets("infer.roi_size=0")]) == 0  # fmt: skip
    windowed = np.asarray(Image.open(tmp_path / "windowed" / "img0.png"))
    whole = np.asarray(Image.open(tmp_path / "whole" / "img0.png"))
    assert windowed.shape == whole.shape == (24, 24)
    from segtrack.inference.predict import from_onnx

    predictor = from_onnx(onnx)
    assert predictor.windows is not None  # recorded at export
    predictor.use_windows({"roi_size": 0, "overlap": 0.5, "mode": "gaussian", "batch_size": 4}, explicit=True)
    assert predictor.windows is None


def test_warm_up_not_below_the_epochs_is_refused(tmp_path, capsys):
    code = _train("train.warmup_epochs=3", "train.epochs=2")
    err = _error(capsys)
    assert code == 2 and "train.warmup_epochs = 3 is not below train.epochs = 2" in err
    assert not (tmp_path / "checkpoints").exists()


def test_a_resume_past_train_epochs_is_refused_and_one_at_it_is_said(tmp_path, capsys, caplog):
    assert _train("train.epochs=2", "export.enabled=false") == 0
    capsys.readouterr()
    before = (tmp_path / "checkpoints" / "last.pt").stat().st_mtime_ns
    code = main(["train", "--resume", "auto", *_sets(*TINY, "plugins.autoload=false", "train.epochs=1")])
    err = _error(capsys)
    assert code == 2 and "train.epochs = 1 but" in err and "already holds 2 trained epochs" in err
    assert (tmp_path / "checkpoints" / "last.pt").stat().st_mtime_ns == before
    with caplog.at_level(logging.WARNING, logger="segtrack.trainer"):
        again = main(["train", "--resume", "auto", *_sets(*TINY, "plugins.autoload=false", "train.epochs=2",
                                                          "export.enabled=false")])  # fmt: skip
    assert again == 0
    assert any("nothing left to train" in r.message and "epoch 2 of 2" in r.message for r in caplog.records)


class OneOutput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_deep_supervision_on_a_model_with_one_output_is_said_once(settings_factory, caplog):
    from segtrack import SegmentationTrainer

    settings = settings_factory("train.deep_supervision=true", "train.epochs=2", "export.enabled=false")
    with caplog.at_level(logging.WARNING, logger="segtrack.trainer"):
        result = SegmentationTrainer(settings, model=OneOutput()).fit()
    assert result.status == "completed"
    said = [r.message for r in caplog.records if "train.deep_supervision" in r.message]
    assert len(said) == 1 and "returns one output" in said[0]


TOKEN_NET = """
import torch


def build(in_channels, num_classes, token):
    if token != "s3cret-token":
        raise ValueError(f"the weights server refused token {token!r}")
    return torch.nn.Conv2d(in_channels, num_classes, 3, padding=1)
"""


def test_a_secret_the_model_builder_takes_stays_out_of_checkpoints_and_predict_reads_it_again(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "tokennet.py").write_text(TOKEN_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    secrets = tmp_path / "configs" / ".secrets.toml"
    secrets.parent.mkdir()
    secrets.write_text('[default.model.kwargs]\ntoken = "s3cret-token"\n')
    assert _train("model.factory='tokennet:build'", "export.enabled=false") == 0
    for name in ("best.pt", "last.pt"):
        assert b"s3cret-token" not in (tmp_path / "checkpoints" / name).read_bytes(), name
    images = _rgb_pngs(tmp_path / "in")
    predict = ["predict", "--checkpoint", "checkpoints/best.pt", "--input", str(images)]
    assert main([*predict, "--out", "out"]) == 0 and (tmp_path / "out" / "img0.png").is_file()
    secrets.unlink()
    capsys.readouterr()
    code = main([*predict, "--out", "out2"])
    err = _error(capsys)
    assert code == 2 and "model.kwargs.token is a secret the checkpoint does not hold" in err
    assert not (tmp_path / "out2").exists()


def test_nifti_volumes_train_from_a_folder_and_predict_into_masks_in_the_same_space(tmp_path, capsys):
    """The field's format: .nii.gz images and masks of an odd size, a non-identity affine kept."""
    nibabel = pytest.importorskip("nibabel")
    rng = np.random.default_rng(3)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    for split in ("images", "masks"):
        (tmp_path / "nifti" / split).mkdir(parents=True)
    for i in range(6):
        mask = np.zeros((13, 12, 11), np.uint8)
        mask[2 + i % 3 : 9, 3:9, 2:8] = 1
        image = (mask * 100 + rng.normal(0, 10, mask.shape)).astype(np.float32)
        nibabel.save(nibabel.Nifti1Image(image, affine), str(tmp_path / "nifti" / "images" / f"case{i}.nii.gz"))
        nibabel.save(nibabel.Nifti1Image(mask, affine), str(tmp_path / "nifti" / "masks" / f"case{i}.nii.gz"))
    folder = ["data.source='folder'", f"data.path='{tmp_path / 'nifti'}'", "data.dims=3", "data.num_classes=2"]
    assert _train(*folder, "model.in_channels=1", "model.depth=1", "export.enabled=false", "infer.roi_size=8") == 0
    capsys.readouterr()
    code = main(["predict", "--checkpoint", "checkpoints/best.pt", "--input", str(tmp_path / "nifti" / "images"),
                 "--out", "masks"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    written = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert written == [f"case{i}.nii.gz" for i in range(6)]
    mask = nibabel.load(str(tmp_path / "masks" / "case0.nii.gz"))
    assert mask.shape == (13, 12, 11) and np.allclose(mask.affine, affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_a_local_store_that_cannot_be_written_is_refused_before_training(tmp_path, capsys):
    """A folder no process may write (as root too: /proc/1), or a read-only folder for a user."""
    import os

    targets = [Path("/proc/1")]
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        targets.append(locked)
    for folder in targets:
        if os.access(folder, os.W_OK):
            continue  # this machine lets the user write there: nothing to refuse
        capsys.readouterr()
        code = main(["train", *_sets(*TINY, "plugins.disabled=['analytics']",
                                     f"mlflow.tracking_uri='sqlite:///{folder}/mlflow.db'")])  # fmt: skip
        err = _error(capsys)
        assert code == 2 and f"{str(folder)!r} is not writable" in err and "mlflow.tracking_uri" in err, err
        assert len(err.splitlines()) == 1 and not (tmp_path / "checkpoints").exists()
