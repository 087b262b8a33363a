"""Sample previews a person can read: a volume shows the slice where the structure is (not a
blank middle slice), with its index; the columns are named."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from PIL import Image

from segtrack_mlflow.overlays import preview_slice, write_overlays


def _volume(truth_slice: int | None, predicted_slice: int | None, depth: int = 8):
    mask, prediction = np.zeros((depth, 16, 16), np.int64), np.zeros((depth, 16, 16), np.int64)
    if truth_slice is not None:
        mask[truth_slice, 4:9, 4:9] = 1
    if predicted_slice is not None:
        prediction[predicted_slice, 2:5, 2:5] = 2
    image = np.random.default_rng(0).random((1, depth, 16, 16)).astype(np.float32)
    return SimpleNamespace(image=image, mask=mask, prediction=prediction)


def test_a_volume_previews_the_slice_with_the_most_foreground():
    image, mask, prediction, caption = preview_slice(_volume(truth_slice=6, predicted_slice=1))
    assert caption == "slice 7/8" and mask.sum() == 25 and image.shape == (1, 16, 16)
    _, mask, prediction, caption = preview_slice(_volume(truth_slice=None, predicted_slice=2))
    assert caption == "slice 3/8" and prediction.max() == 2  # empty truth: where the prediction is
    assert preview_slice(_volume(None, None))[3] == "slice 5/8"  # nothing anywhere: the middle
    flat = SimpleNamespace(image=np.zeros((3, 8, 8)), mask=np.zeros((8, 8)), prediction=np.zeros((8, 8)))
    assert preview_slice(flat)[3] == ""


def test_the_preview_png_names_its_columns_above_the_samples(tmp_path):
    path = write_overlays([_volume(3, 3), _volume(5, None)], tmp_path / "preview.png", scale=4)
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.shape == (14 + (16 * 2 + 2) * 4, (16 * 3 + 2) * 4)
    header = pixels[:14]
    assert (header < 128).sum() > 20  # the column titles are drawn in the white strip
