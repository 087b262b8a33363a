"""Colours of class ids, shared by everything that draws masks (predict overlays, trackers' sample
images): class 0 black, then ten distinct colours repeating; ignored pixels (-1) grey."""

from __future__ import annotations

import numpy as np

CLASS_COLOURS = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
    ],
    dtype=np.uint8,
)
IGNORED_COLOUR = np.array([128, 128, 128], dtype=np.uint8)


def colour_mask(mask: np.ndarray) -> np.ndarray:
    """RGB ``(*spatial, 3)`` uint8 of a class-id mask; -1 (ignored) is grey."""
    mask = np.asarray(mask)
    rgb = CLASS_COLOURS[np.abs(mask) % len(CLASS_COLOURS)]
    rgb[mask < 0] = IGNORED_COLOUR
    return rgb
