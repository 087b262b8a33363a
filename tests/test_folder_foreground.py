"""Foreground-weighted training crops of the folder dataset (``data.crop_foreground``): with sparse
foreground, a crop centred on a foreground pixel with probability p, uniform otherwise; seeded by
(seed, epoch, sample) like every other augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from segtrack.data.folder import FolderDataset, foreground_pixel, random_crop

SIDE, CROP, DRAWS = 96, 16, 2000
BLOB = (slice(80, 82), slice(80, 82))  # 2x2 pixels of class 1 near a corner


def _write(root, image: np.ndarray, mask: np.ndarray, name: str = "s0") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    np.save(root / "images" / f"{name}.npy", image)
    np.save(root / "masks" / f"{name}.npy", mask)


def _sparse(root, ignored: bool = False) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[BLOB] = 1
    if ignored:
        mask[5:25, 5:25] = 255  # a large ignored area far from the blob
    image = np.random.default_rng(0).integers(0, 255, (SIDE, SIDE), dtype=np.uint8)
    _write(root, image, mask)
    return mask


def _uniform_hit_rate(mask: np.ndarray) -> float:
    """The exact chance that a uniform crop holds a pixel of class 1."""
    starts = range(SIDE - CROP + 1)
    hits = [bool((mask[y : y + CROP, x : x + CROP] == 1).any()) for y in starts for x in starts]
    return float(np.mean(hits))


def _dataset(root, p: float, ignore_index: int | None = None) -> FolderDataset:
    return FolderDataset(
        root, dims=2, channels=1, crop=[CROP], augment=False, seed=5, crop_foreground=p, ignore_index=ignore_index
    )


@pytest.mark.parametrize("p", [0.0, 0.33, 1.0])
def test_the_share_of_crops_holding_foreground_is_what_p_implies(tmp_path, p):
    mask = _sparse(tmp_path)
    uniform = _uniform_hit_rate(mask)
    assert uniform < 0.05  # sparse: a uniform crop almost never holds the blob
    dataset = _dataset(tmp_path, p)
    held = np.mean([bool((dataset.training_sample(0, epoch)[1] == 1).any()) for epoch in range(DRAWS)])
    assert abs(held - (p + (1 - p) * uniform)) < 0.05
    if p == 1.0:
        assert held == 1.0


def test_without_foreground_crops_the_draws_are_those_of_a_plain_uniform_crop(tmp_path):
    _sparse(tmp_path)
    dataset = _dataset(tmp_path, 0.0)
    image, mask = dataset._read(0)
    for epoch in range(20):
        expected = random_crop(image, mask, [CROP], np.random.default_rng([5, epoch, 0]))
        _, got = dataset.training_sample(0, epoch)
        assert np.array_equal(got.numpy(), expected[1])


def test_crops_are_seeded_by_seed_epoch_and_sample(tmp_path):
    _sparse(tmp_path)
    a, b = _dataset(tmp_path, 0.33), _dataset(tmp_path, 0.33)
    for epoch in range(30):
        assert np.array_equal(a.training_sample(0, epoch)[1].numpy(), b.training_sample(0, epoch)[1].numpy())


def test_the_ignored_value_is_never_taken_for_foreground(tmp_path):
    _sparse(tmp_path, ignored=True)
    aware = _dataset(tmp_path, 1.0, ignore_index=255)
    assert all((aware.training_sample(0, e)[1] == 1).any() for e in range(200))
    unaware = _dataset(tmp_path, 1.0)  # 255 is then foreground too, and far larger than the blob
    assert not all((unaware.training_sample(0, e)[1] == 1).any() for e in range(200))


def test_a_crop_is_centred_on_its_pixel_and_kept_inside_the_image():
    mask = np.zeros((40, 50), np.int64)
    image = np.zeros((1, 40, 50), np.float32)
    rng = np.random.default_rng(0)
    _, window = random_crop(image, mask + np.arange(50), [10], rng, centre=(20, 25))
    assert window[5, 5] == 25  # the centre pixel sits at crop // 2
    _, window = random_crop(image, mask + np.arange(50), [10], rng, centre=(39, 49))
    assert window.shape == (10, 10) and window[-1, -1] == 49  # clamped to the image's corner
    assert foreground_pixel(mask, None, rng) is None


def test_volumes_crop_around_foreground_too(tmp_path):
    mask = np.zeros((12, 30, 30), np.uint8)
    mask[10:12, 27:29, 1:3] = 2
    _write(tmp_path, np.zeros((12, 30, 30), np.uint8), mask)
    dataset = FolderDataset(tmp_path, dims=3, channels=1, crop=[6, 8, 8], augment=True, seed=1, crop_foreground=1.0)
    assert all((dataset.training_sample(0, e)[1] == 2).any() for e in range(50))


def test_the_setting_reaches_the_configured_folder_dataset(trainer_factory, tmp_path):
    for name, ignored in (("ignored", True), ("plain", False)):
        _sparse(tmp_path / name, ignored=ignored)
        _write(tmp_path / name, np.zeros((SIDE, SIDE), np.uint8), np.zeros((SIDE, SIDE), np.uint8), "s1")
    common = ["data.source='folder'", "data.num_classes=2", "model.in_channels=1", "data.crop=16"]
    dataset = trainer_factory(*common, "data.path='ignored'", "data.ignore_index=255").data.dataset
    assert (dataset.crop_foreground, dataset.ignore_index) == (0.33, 255)
    dataset = trainer_factory(*common, "data.path='plain'", "data.crop_foreground=1").data.dataset
    assert (dataset.crop_foreground, dataset.ignore_index) == (1.0, None)
