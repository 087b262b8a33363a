"""Datasets (synthetic in memory, or a folder of PNG pairs), splits, folds and fingerprints."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from segtrack.errors import DataError

IMAGE_SUFFIXES = (".png",)


class ArrayDataset(Dataset):
    """Images (N, C, H, W) float32 in [0, 1] and masks (N, H, W) int64 class ids, in memory."""

    def __init__(self, images: np.ndarray, masks: np.ndarray):
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        self.masks = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.masks[index]


def synthetic_arrays(num_samples: int, image_size: int, num_classes: int, channels: int, seed: int, dims: int = 2):
    """Deterministic shapes on noise: class k (k >= 1) is a disc/ball or a box with its own colour.

    ``dims = 2`` gives images (N, C, S, S), ``dims = 3`` volumes (N, C, S, S, S)."""
    rng = np.random.default_rng(seed)
    size = image_size
    grid = np.mgrid[(slice(0, size),) * dims]
    palette = rng.uniform(0.35, 1.0, size=(num_classes, channels)).astype(np.float32)
    images = np.empty((num_samples, channels) + (size,) * dims, dtype=np.float32)
    masks = np.zeros((num_samples,) + (size,) * dims, dtype=np.int64)
    for n in range(num_samples):
        image = rng.normal(0.15, 0.08, size=(channels,) + (size,) * dims).astype(np.float32)
        mask = masks[n]
        for cls in range(1, num_classes):
            for _ in range(rng.integers(1, 3)):
                radius = rng.integers(max(2, size // 12), max(3, size // 5))
                centre = rng.integers(radius, size - radius, size=dims)
                offsets = [axis - c for axis, c in zip(grid, centre)]
                if cls % 2:
                    region = sum(o**2 for o in offsets) <= radius**2
                else:
                    region = np.abs(offsets[0]) <= radius
                    for o in offsets[1:]:
                        region &= np.abs(o) <= radius * 0.6
                mask[region] = cls
                image[:, region] = palette[cls][:, None] + rng.normal(0, 0.05, size=(channels, 1))
        images[n] = np.clip(image, 0.0, 1.0)
    return images, masks


def folder_arrays(path: str | Path, num_classes: int, channels: int):
    """Read ``images/*.png`` and ``masks/*.png`` pairs with equal names; masks hold class ids."""
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"{folder} is missing: data.path must hold images/ and masks/ folders of PNG files")
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise DataError(f"{image_dir} holds no .png images: add image/mask pairs or use data.source = \"synthetic\"")
    only_images, only_masks = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if only_images or only_masks:
        raise DataError(
            f"image and mask names differ: without mask {only_images[:5]}, without image {only_masks[:5]}; "
            f"every images/NAME.png needs masks/NAME.png"
        )
    mode = "L" if channels == 1 else "RGB"
    image_list, mask_list, shape = [], [], None
    for stem in sorted(images):
        try:
            with Image.open(images[stem]) as im:
                image = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
            with Image.open(masks[stem]) as im:
                if im.mode not in ("L", "P", "I", "I;16"):
                    raise DataError(f"{masks[stem]} has mode {im.mode}: a mask must be a single-channel PNG of class ids")
                mask = np.asarray(im, dtype=np.int64)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read {stem}.png ({exc}): replace or remove the file") from None
        if image.shape[:2] != mask.shape:
            raise DataError(f"{stem}: image is {image.shape[1]}x{image.shape[0]} but mask is "
                            f"{mask.shape[1]}x{mask.shape[0]}: masks must match their image size")
        if shape is None:
            shape = mask.shape
        elif mask.shape != shape:
            raise DataError(f"{stem}: size {mask.shape[1]}x{mask.shape[0]} differs from the first image's "
                            f"{shape[1]}x{shape[0]}: resize the dataset to one size")
        bad = np.unique(mask[(mask < 0) | (mask >= num_classes)])
        if bad.size:
            raise DataError(f"{masks[stem]} holds class ids {bad.tolist()[:5]} outside 0..{num_classes - 1}: "
                            f"fix the mask or raise data.num_classes")
        image_list.append(image[None] if channels == 1 else image.transpose(2, 0, 1))
        mask_list.append(mask)
    return np.stack(image_list), np.stack(mask_list)


def load_arrays(data: dict, model: dict, seed: int):
    channels = model["in_channels"]
    if data["source"] == "synthetic":
        images, masks = synthetic_arrays(data["num_samples"], data["image_size"], data["num_classes"], channels, seed,
                                         data["dims"])
    else:
        if not data["path"]:
            raise DataError('data.source is "folder" but data.path is empty: set data.path to the dataset folder')
        if data["dims"] != 2:
            raise DataError("data.source = \"folder\" reads 2D PNG images: set data.dims = 2")
        images, masks = folder_arrays(data["path"], data["num_classes"], channels)
    multiple = 2 ** model["depth"]
    sides = masks.shape[1:]
    if any(side % multiple for side in sides):
        size = "x".join(map(str, sides[::-1]))
        raise DataError(f"images are {size} but model.depth={model['depth']} needs sides divisible "
                        f"by {multiple}: change the image size or model.depth")
    return images, masks


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle, then the first ``val_fraction`` are validation. Both parts non-empty."""
    if count < 2:
        raise DataError(f"the dataset has {count} sample(s): at least 2 are needed (one to train, one to validate)")
    order = np.random.default_rng(seed).permutation(count)
    num_val = min(count - 1, max(1, round(count * val_fraction)))
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def fold_indices(count: int, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """K-fold: the seeded shuffle cut into ``folds`` near-equal parts; part ``fold`` validates."""
    if folds > count:
        raise DataError(f"{folds} folds need at least {folds} samples, the dataset has {count}: lower --folds")
    order = np.random.default_rng(seed).permutation(count)
    parts = np.array_split(order, folds)
    val = parts[fold]
    train = np.concatenate([p for i, p in enumerate(parts) if i != fold])
    return np.sort(train), np.sort(val)


def sample_digest(image, mask) -> bytes:
    """SHA256 of one sample: its image as float32 bytes, then its mask as int64 bytes."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.asarray(image), dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(np.asarray(mask), dtype=np.int64).tobytes())
    return h.digest()


def combine_digests(digests) -> str:
    """SHA256 over sorted per-sample digests: the same set of samples gives the same hex, in any order."""
    total = hashlib.sha256()
    for d in sorted(digests):
        total.update(d)
    return total.hexdigest()


def fingerprint(images: np.ndarray, masks: np.ndarray, indices: Sequence[int]) -> str:
    """Order-independent SHA256 of the samples at ``indices``."""
    return combine_digests(sample_digest(images[i], masks[i]) for i in indices)
