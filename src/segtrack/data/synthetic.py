"""The built-in synthetic data: shapes in noise, 2D or 3D, held in memory."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from segtrack.errors import DataError


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


def load_arrays(data: dict, model: dict, seed: int):
    """The built-in synthetic images (or volumes) and masks, checked against the UNet's depth."""
    images, masks = synthetic_arrays(
        data["num_samples"], data["image_size"], data["num_classes"], model["in_channels"], seed, data["dims"]
    )
    multiple = 2 ** model["depth"] if model["name"] == "unet" and not model.get("factory") else 1
    sides = masks.shape[1:]
    if any(side % multiple for side in sides):
        size = "x".join(map(str, sides[::-1]))
        raise DataError(
            f"images are {size} but model.depth={model['depth']} needs sides divisible "
            f"by {multiple}: change data.image_size or model.depth"
        )
    return images, masks
