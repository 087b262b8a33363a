"""Validation samples as one PNG: a row per sample, columns image | truth | prediction.
Volumes show their middle slice; images are scaled to their own range."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segtrack import colour_mask


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > 1:  # not in [0, 1]: show the image's own range
        image = (image - low) / (high - low or 1.0)
    image = image[:3] if image.shape[0] == 3 else np.repeat(image[:1], 3, axis=0)
    return (np.clip(image.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)


def _middle_slice(sample):
    """(image, mask, prediction) of a 2D sample, or of a volume's middle depth slice."""
    image, mask, prediction = (np.asarray(a) for a in (sample.image, sample.mask, sample.prediction))
    if mask.ndim == 3:
        depth = mask.shape[0] // 2
        image, mask, prediction = image[:, depth], mask[depth], prediction[depth]
    return image, mask, prediction


def write_overlays(samples, path: Path, scale: int = 4) -> Path:
    def row(sample):
        image, mask, prediction = _middle_slice(sample)
        parts = [_rgb(image), colour_mask(mask), colour_mask(prediction)]
        divider = np.full((parts[0].shape[0], 1, 3), 255, np.uint8)
        return np.concatenate([parts[0], divider, parts[1], divider, parts[2]], axis=1)

    rows = [row(s) for s in samples]
    gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([part for row in rows for part in (row, gap)][:-1], axis=0)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    from PIL import Image

    Image.fromarray(grid).save(path)
    return path
