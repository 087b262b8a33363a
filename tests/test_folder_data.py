"""The folder dataset on files a user brings: 16-bit TIFF tiles of mixed sizes, palette masks,
JPEG, 3D TIFF and .npy volumes, normalisation, crops and seeded augmentation, split files, and the
files that must fail with a clear message."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from segtrack import DataError, hookimpl
from segtrack.cli import main
from segtrack.data.batches import IGNORED
from segtrack.data.folder import FolderDataset, normalize
from segtrack.data.imageio import read_mask
from segtrack.data.plan import pad_stack

FOLDER = ["data.source='folder'", "data.path='data'", "train.epochs=2", "model.width=4", "model.depth=2"]


def _tiles_16bit(root, count=8, seed=0):
    """Microscopy-like 16-bit grey tiles of different sizes (none a power of two) with id masks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        h, w = int(rng.integers(37, 61)), int(rng.integers(41, 70))
        mask = np.zeros((h, w), np.uint8)
        mask[5:15, 6:20] = 1
        mask[h - 15 : h - 4, w - 18 : w - 5] = 2
        image = (mask * 15000.0 + rng.normal(2000, 500, (h, w))).clip(0, 65535).astype(np.uint16)
        tifffile.imwrite(root / "images" / f"tile{i:02d}.tif", image)
        tifffile.imwrite(root / "masks" / f"tile{i:02d}.tif", mask)


def test_16bit_tiff_tiles_of_mixed_sizes_train_with_crops(trainer_factory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _tiles_16bit(tmp_path / "data")
    trainer = trainer_factory(*FOLDER, "data.crop=32", "model.in_channels=1", "train.num_workers=2")
    result = trainer.fit()
    assert result.status == "completed" and np.isfinite(result.best_value)
    dataset = trainer.data.dataset
    image, mask = dataset.training_sample(0, epoch=0)
    assert image.shape == (1, 32, 32) and mask.shape == (32, 32)
    # 16-bit: percentile-normalised into [0, 1], not divided by 255
    whole, _ = dataset[0]
    assert whole.dtype == torch.float32 and float(whole.min()) >= 0.0 and float(whole.max()) <= 1.0


def test_validation_pads_whole_images_and_leaves_the_padding_out():
    pairs = [
        (torch.ones(1, 37, 41), torch.ones(37, 41, dtype=torch.long)),
        (torch.ones(1, 50, 45), torch.zeros(50, 45, dtype=torch.long)),
    ]
    images, masks = pad_stack(pairs, multiple=4)
    assert images.shape == (2, 1, 52, 48) and masks.shape == (2, 52, 48)
    assert int((masks[0] == 1).sum()) == 37 * 41 and int((masks[0] == IGNORED).sum()) == 52 * 48 - 37 * 41
    assert float(images[0, 0, 40:, :].abs().sum()) == 0.0


def test_augmentation_is_seeded_by_epoch_and_index_so_resume_and_workers_agree(trainer_factory, tmp_path):
    """Proves the loop's own training batches (crops, flips, turns) are the same with 0 and with 2
    DataLoader workers, batch for batch, and differ between epochs: an augmentation drawn from a
    process-wide random state would differ in the worker processes."""
    _tiles_16bit(tmp_path / "data")
    dataset = FolderDataset(tmp_path / "data", dims=2, channels=1, crop=[24, 24], augment=True, seed=3)
    again = FolderDataset(tmp_path / "data", dims=2, channels=1, crop=[24, 24], augment=True, seed=3)
    a, b = dataset.training_sample(2, epoch=5), again.training_sample(2, epoch=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # a resumed fit draws the same sample

    def batches(workers: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        trainer = trainer_factory(*FOLDER, "data.crop=24", "model.in_channels=1", f"train.num_workers={workers}")
        return list(trainer.data.for_split(0.25).train_batches(epoch))

    in_process, by_workers = batches(0, epoch=1), batches(2, epoch=1)
    assert len(in_process) == len(by_workers) == 2
    for (image, mask), (w_image, w_mask) in zip(in_process, by_workers):
        assert torch.equal(image, w_image) and torch.equal(mask, w_mask)
    next_epoch = batches(0, epoch=2)
    assert any(not torch.equal(m, n) for (_, m), (_, n) in zip(in_process, next_epoch))


def _mean_foreground_dice(masks: np.ndarray, predictions: np.ndarray) -> float:
    """Mean Dice of classes 1 and 2 over the pixels whose mask is not IGNORED (as metrics.py promises)."""
    valid = masks != IGNORED
    dice = []
    for k in (1, 2):
        truth, said = (masks == k) & valid, (predictions == k) & valid
        denominator = truth.sum() + said.sum()
        if denominator:
            dice.append(2 * (truth & said).sum() / denominator)
    return float(np.mean(dice))


def test_palette_masks_give_palette_indices_and_ignore_index_is_left_out(trainer_factory, tmp_path, monkeypatch):
    """Proves more than completion: the loop's validation masks hold the palette indices (not
    colours) and -1 exactly on the ignored band, and val_dice equals Dice computed without that band,
    which looks like class 1 (so counting it as background would change the score)."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [200] * (253 * 3)  # index 255: a grey "unlabelled" colour
    ids = np.zeros((32, 32), np.uint8)
    ids[4:14, 4:14] = 1
    ids[18:28, 16:30] = 2
    ids[:, :3] = 255
    looks = np.where(ids == 255, 1, ids)  # the unlabelled band is drawn in class 1's colour
    for i in range(8):
        mask = Image.fromarray(ids, mode="P")
        mask.putpalette(palette)
        mask.save(root / "masks" / f"p{i}.png")
        rgb = (np.stack([looks == 1, looks == 2, looks == 0], -1) * 180 + rng.integers(0, 60, (32, 32, 3))).astype(
            np.uint8
        )
        Image.fromarray(rgb).save(root / "images" / f"p{i}.png")
    assert read_mask(root / "masks" / "p0.png", 2)[10, 10] == 1  # the index, not the red colour

    class Validations:
        def __init__(self):
            self.batches, self.results = {}, []

        @hookimpl
        def validation_batch_end(self, batch):
            self.batches.setdefault(batch.epoch, []).append((batch.masks.numpy(), batch.predictions.numpy()))

        @hookimpl
        def validation_end(self, result):
            self.results.append(result)

    seen = Validations()
    result = trainer_factory(*FOLDER, "data.ignore_index=255", "train.epochs=5", "train.lr=0.02", plugins=[seen]).fit()
    assert result.status == "completed"
    masks, predictions = (np.concatenate(parts) for parts in zip(*seen.batches[4]))
    expected = np.where(ids == 255, IGNORED, ids.astype(np.int64))
    assert all(np.array_equal(m, expected) for m in masks)
    score = _mean_foreground_dice(masks, predictions)
    assert seen.results[-1].val_dice == pytest.approx(score) and score > 0.2, score
    band_as_background = _mean_foreground_dice(np.where(masks == IGNORED, 0, masks), predictions)
    assert band_as_background != pytest.approx(score), "the band must be predicted as foreground somewhere"
    with pytest.raises(DataError, match=r"class ids \[255\] outside 0..2 \(data.ignore_index is not set\)"):
        trainer_factory(*FOLDER)


def test_a_jpeg_dataset_with_png_masks_trains_and_splits_by_list_files(trainer_factory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(6):
        ids = np.zeros((40, 48), np.uint8)
        ids[8:30, 10 + i : 30 + i] = 1
        Image.fromarray(np.repeat((ids * 200 + 30)[..., None], 3, -1)).save(root / "images" / f"j{i}.jpg", quality=85)
        Image.fromarray(ids).save(root / "masks" / f"j{i}.png")
    (root / "train.txt").write_text("j0\nj1.jpg\nj2\nj3\n")
    (root / "val.txt").write_text("# held out\nj4\nj5\n")
    trainer = trainer_factory(*FOLDER, "data.num_classes=2")
    result = trainer.fit()
    assert result.status == "completed"
    data = trainer.data.for_split(0.5)
    assert (data.num_train, data.num_val) == (4, 2)
    (root / "val.txt").write_text("j4\nj9\n")
    with pytest.raises(DataError, match=r"val.txt names \['j9'\], which have no image/mask pair"):
        trainer_factory(*FOLDER, "data.num_classes=2").fit()


def test_3d_tiff_and_npy_volumes_train(trainer_factory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(2)
    for i in range(6):
        mask = np.zeros((10, 20, 18), np.uint8)
        mask[2:7, 4:12, 3:10] = 1
        volume = (mask * 900.0 + rng.normal(300, 50, mask.shape)).astype(np.uint16)
        if i % 2:
            np.save(root / "images" / f"v{i}.npy", volume)
        else:
            tifffile.imwrite(root / "images" / f"v{i}.tif", volume)  # one page per depth slice
        tifffile.imwrite(root / "masks" / f"v{i}.tif", mask)
    trainer = trainer_factory(
        *FOLDER, "data.dims=3", "data.num_classes=2", "model.in_channels=1", "data.crop=[8, 16, 16]"
    )
    result = trainer.fit()
    assert result.status == "completed"
    assert trainer.data.dataset[0][0].shape == (1, 10, 20, 18)


def test_normalize_modes():
    image = np.array([[[0, 1000, 2000, 60000]]], dtype=np.uint16)
    assert normalize(image, "minmax").max() == pytest.approx(1.0) and normalize(image, "minmax").min() == 0.0
    auto = normalize(image, "auto")  # 16-bit: percentiles, clipped to [0, 1]
    assert auto.min() == 0.0 and auto.max() == 1.0
    assert normalize(np.array([[[255]]], np.uint8), "auto").item() == 1.0
    assert normalize(image, "none").max() == 60000.0
    rgb = np.full((3, 2, 2), 255, np.uint8)
    assert normalize(rgb, "imagenet")[0, 0, 0] == pytest.approx((1 - 0.485) / 0.229)


def _pngs(root, count=6):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        ids = np.zeros((16, 16), np.uint8)
        ids[4:10, 4:10] = 1
        Image.fromarray(np.repeat((ids * 200)[..., None], 3, -1)).save(root / "images" / f"s{i}.png")
        Image.fromarray(ids).save(root / "masks" / f"s{i}.png")


def test_an_unreadable_image_found_mid_epoch_is_named_in_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _pngs(tmp_path / "data", count=8)
    (tmp_path / "data" / "images" / "s3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"torn" * 10)
    code = main(
        [
            "train",
            *[a for s in FOLDER for a in ("--set", s)],
            "--set",
            "train.num_workers=2",
            "--set",
            "data.val_fraction=0.5",
            "--set",
            "plugins.autoload=false",
            "--set",
            "data.num_classes=2",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "cannot read data/images/s3.png" in err and "Traceback" not in err, err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_files_that_are_not_regular_are_left_out_and_named_once_before_training(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    _pngs(tmp_path / "data", count=8)
    os.mkfifo(tmp_path / "data" / "images" / "x.png")  # reading it would block forever
    os.mkfifo(tmp_path / "data" / "masks" / "x.png")
    (tmp_path / "data" / "masks" / "y.png").symlink_to(tmp_path / "gone.png")
    sets = [*FOLDER, "train.epochs=1", "plugins.autoload=false", "data.num_classes=2", "export.enabled=false"]
    assert main(["train", *[a for s in sets for a in ("--set", s)]]) == 0
    said = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert said == [
        "data: 3 file(s) in data left out, not regular files: images/x.png (a FIFO), "
        "masks/x.png (a FIFO), masks/y.png (a broken symbolic link)"
    ]
    assert FolderDataset(tmp_path / "data", dims=2, channels=3).names == [f"s{i}" for i in range(8)]


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg"])
def test_jpeg_masks_are_refused_as_lossy_and_named(tmp_path, suffix):
    _pngs(tmp_path, count=4)
    for name in ("s1", "s3"):
        mask = tmp_path / "masks" / f"{name}.png"
        Image.open(mask).convert("L").save(mask.with_suffix(suffix), quality=95)
        mask.unlink()
    with pytest.raises(DataError) as caught:
        FolderDataset(tmp_path, dims=2, channels=3)
    assert str(caught.value) == (
        f"2 mask(s) in {tmp_path / 'masks'} are JPEG (s1{suffix}, s3{suffix}), which is lossy and not accepted "
        f"for masks (it changes class ids at every edge): save the masks as PNG, TIFF or .npy"
    )


def test_a_decompression_bomb_is_refused_with_the_file_name(tmp_path):
    from PIL import Image as PILImage

    _pngs(tmp_path, count=2)
    PILImage.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "images" / "s1.png")
    old = PILImage.MAX_IMAGE_PIXELS
    PILImage.MAX_IMAGE_PIXELS = 100  # 64x64 is now "over twice the limit"
    try:
        with pytest.raises(DataError, match=r"cannot read .*s1.png: Image size \(4096 pixels\) exceeds limit"):
            FolderDataset(tmp_path, dims=2, channels=3)[1]
    finally:
        PILImage.MAX_IMAGE_PIXELS = old
