"""Datasets, splits and fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segtrack.data.digests import fingerprint
from segtrack.data.folder import FolderDataset
from segtrack.data.splits import fold_indices, split_indices
from segtrack.data.synthetic import synthetic_arrays


def test_synthetic_data_is_deterministic_and_labelled():
    a = synthetic_arrays(4, 32, 4, 3, seed=1)
    b = synthetic_arrays(4, 32, 4, 3, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert set(np.unique(a[1])) == {0, 1, 2, 3}
    assert a[0].shape == (4, 3, 32, 32) and a[0].min() >= 0 and a[0].max() <= 1


def test_fingerprint_is_order_independent_and_content_sensitive():
    images, masks = synthetic_arrays(6, 16, 3, 3, seed=0)
    assert fingerprint(images, masks, [0, 1, 2]) == fingerprint(images, masks, [2, 0, 1])
    assert fingerprint(images, masks, [0, 1, 2]) != fingerprint(images, masks, [0, 1, 3])
    changed = masks.copy()
    changed[0, 0, 0] = (changed[0, 0, 0] + 1) % 3
    assert fingerprint(images, masks, [0]) != fingerprint(images, changed, [0])


def test_splits_and_folds_partition_the_data():
    train, val = split_indices(10, 0.3, seed=0)
    assert len(val) == 3 and sorted([*train, *val]) == list(range(10))
    vals = [set(fold_indices(10, 3, k, seed=0)[1]) for k in range(3)]
    assert set().union(*vals) == set(range(10)) and sum(map(len, vals)) == 10


def _write_pair(root, name, image_size=(8, 8), mask_size=None, mask_value=1):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*image_size, 3), 128, np.uint8)).save(root / "images" / f"{name}.png")
    Image.fromarray(np.full(mask_size or image_size, mask_value, np.uint8)).save(root / "masks" / f"{name}.png")


def test_folder_dataset_reads_pairs(tmp_path):
    _write_pair(tmp_path, "a")
    _write_pair(tmp_path, "b", mask_value=2)
    dataset = FolderDataset(tmp_path, dims=2, channels=3)
    (image_a, _mask_a), (_image_b, mask_b) = dataset[0], dataset[1]
    assert len(dataset) == 2 and image_a.shape == (3, 8, 8) and mask_b.max() == 2
    assert image_a.max() == pytest.approx(128 / 255)
