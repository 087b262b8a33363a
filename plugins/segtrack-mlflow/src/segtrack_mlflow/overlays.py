"""Validation samples as one PNG: a row per sample, columns image | truth | prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PALETTE = np.array([
    [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60],
], dtype=np.uint8)


def _colour(mask: np.ndarray) -> np.ndarray:
    return PALETTE[np.asarray(mask) % len(PALETTE)]


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    return (np.clip(image[:3].transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)


def write_overlays(samples, path: Path, scale: int = 4) -> Path:
    def row(sample):
        parts = [_rgb(sample.image), _colour(sample.mask), _colour(sample.prediction)]
        divider = np.full((parts[0].shape[0], 1, 3), 255, np.uint8)
        return np.concatenate([parts[0], divider, parts[1], divider, parts[2]], axis=1)

    rows = [row(s) for s in samples]
    gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([part for row in rows for part in (row, gap)][:-1], axis=0)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    from PIL import Image

    Image.fromarray(grid).save(path)
    return path
