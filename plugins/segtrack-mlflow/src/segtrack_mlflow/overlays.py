"""Validation samples as one PNG: a row per sample, columns image | truth | prediction under a
header naming them. A volume shows the depth slice with the most foreground in its truth (else in
the prediction, else the middle one), its index written on the row; images are scaled to their
own range."""

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


def preview_slice(sample) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(image, mask, prediction, caption) of a 2D sample, or of a volume's most telling slice."""
    image, mask, prediction = (np.asarray(a) for a in (sample.image, sample.mask, sample.prediction))
    if mask.ndim != 3:
        return image, mask, prediction, ""
    depth = mask.shape[0] // 2
    for labels in (mask, prediction):
        foreground = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1)
        if foreground.max() > 0:
            depth = int(foreground.argmax())
            break
    return image[:, depth], mask[depth], prediction[depth], f"slice {depth + 1}/{mask.shape[0]}"


def write_overlays(samples, path: Path, scale: int = 4) -> Path:
    from PIL import Image, ImageDraw

    def row(sample):
        image, mask, prediction, caption = preview_slice(sample)
        parts = [_rgb(image), colour_mask(mask), colour_mask(prediction)]
        divider = np.full((parts[0].shape[0], 1, 3), 255, np.uint8)
        return np.concatenate([parts[0], divider, parts[1], divider, parts[2]], axis=1), caption, parts[0].shape[1]

    rows = [row(s) for s in samples]
    gap = np.full((2, rows[0][0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([part for pixels, _, _ in rows for part in (pixels, gap)][:-1], axis=0)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    header = 14
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + header), "white")
    canvas.paste(Image.fromarray(grid), (0, header))
    draw = ImageDraw.Draw(canvas)
    column = (rows[0][2] + 1) * scale
    for index, title in enumerate(("image", "truth", "prediction")):
        draw.text((index * column + 2, 1), title, fill="black")
    top = header
    for pixels, caption, _ in rows:
        if caption:
            draw.text((3, top + 2), caption, fill="yellow", stroke_width=1, stroke_fill="black")
        top += (pixels.shape[0] + 2) * scale
    canvas.save(path)
    return path
