"""The logged model serves what ``segtrack predict`` gives: loaded with ``mlflow.pyfunc`` from a
real store, its ``predict`` normalises as training did, runs the recorded sliding windows and
returns the mask, element for element the mask ``segtrack predict --onnx`` writes for the same
image; probabilities on request; wrong inputs and params are refused with a sentence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from segtrack.cli import main
from segtrack.data.imageio import read_mask
from segtrack.inference.export import read_metadata

EXPORTED = ["train.epochs=1", "export.enabled=true"]


def _logged_model(sqlite_uri: str):
    """The fit's LoggedModel, loaded by pyfunc through its ``models:/`` URI, and that URI."""
    import mlflow

    client = MlflowClient(sqlite_uri)
    experiment_id = client.get_experiment_by_name("segtrack").experiment_id
    (model,) = client.search_logged_models([experiment_id])
    uri = f"models:/{model.model_id}"
    mlflow.set_tracking_uri(sqlite_uri)
    try:
        return mlflow.pyfunc.load_model(uri), uri
    finally:
        mlflow.set_tracking_uri(None)


def _predict_cli(onnx: str, images: Path, out: str) -> Path:
    assert main(["predict", "--onnx", onnx, "--input", str(images), "--out", out]) == 0
    return Path(out)


def test_a_2d_image_gets_the_mask_segtrack_predict_writes(trainer_factory, sqlite_uri, tmp_path):
    result = trainer_factory(f"mlflow.tracking_uri='{sqlite_uri}'", *EXPORTED).fit()
    loaded, uri = _logged_model(sqlite_uri)
    rng = np.random.default_rng(3)
    images = tmp_path / "in"
    images.mkdir()
    # sides the network cannot take whole (it pads them): a float file and an 8-bit one
    scan = (rng.normal(100, 30, (23, 37, 3)) + 80 * (rng.random((23, 37, 1)) > 0.6)).astype(np.float32)
    np.save(images / "scan.npy", scan)
    photo = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    Image.fromarray(photo).save(images / "photo.png")
    out = _predict_cli(result.export.path, images, "out")

    mask = loaded.predict(scan.transpose(2, 0, 1)[None])
    assert mask.shape == (1, 23, 37) and mask.dtype == np.int64
    np.testing.assert_array_equal(mask[0], read_mask(out / "scan.tif", 2))
    # an 8-bit image's values as float32: image_dtype says how its file held them ("auto": by 255)
    as_float = photo.transpose(2, 0, 1)[None].astype(np.float32)
    photo_mask = loaded.predict(as_float, params={"image_dtype": "uint8"})
    np.testing.assert_array_equal(photo_mask[0], read_mask(out / "photo.png", 2))

    probabilities = loaded.predict(scan.transpose(2, 0, 1)[None], params={"output": "probabilities"})
    assert probabilities.shape == (1, 3, 23, 37) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), mask)

    # a batch is N images, each normalised on its own; the input example saved with the model runs
    batch = np.stack([scan.transpose(2, 0, 1), as_float[0]])
    np.testing.assert_array_equal(loaded.predict(batch), np.concatenate([mask, loaded.predict(as_float)]))
    example = loaded.input_example["x"]
    assert loaded.predict(example).shape == (len(example), *example.shape[2:])
    # honest signature and requirements
    (given,) = loaded.metadata.get_input_schema().inputs
    (returned,) = loaded.metadata.get_output_schema().inputs
    assert (given.type, given.shape) == (np.dtype(np.float32), (-1, 3, -1, -1))
    assert (returned.name, returned.type, returned.shape) == ("mask", np.dtype(np.int64), (-1, -1, -1))
    import mlflow

    mlflow.set_tracking_uri(sqlite_uri)
    try:
        requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split()
    finally:
        mlflow.set_tracking_uri(None)
    assert {r.split("==")[0] for r in requirements} >= {"segtrack", "onnxruntime", "numpy"}
    # refused with a sentence: one image without its batch axis, an unknown output, values no uint8 holds
    with pytest.raises(MlflowException, match="Shape of input"):
        loaded.predict(scan.transpose(2, 0, 1))
    with pytest.raises(MlflowException, match="output='logits' is not one of mask, probabilities"):
        loaded.predict(as_float, params={"output": "logits"})
    with pytest.raises(MlflowException, match="not uint8"):
        loaded.predict(as_float + 0.5, params={"image_dtype": "uint8"})


def test_a_3d_volume_of_any_size_gets_the_windowed_mask_segtrack_predict_writes(trainer_factory, sqlite_uri, tmp_path):
    """Windows of 16 recorded at training; a 31x61x57 volume (the bare network refuses it whole)."""
    trainer = trainer_factory(
        f"mlflow.tracking_uri='{sqlite_uri}'", *EXPORTED, "data.dims=3", "data.num_samples=8", "model.in_channels=1",
        "infer.roi_size=16", "mlflow.sample_overlays=0",
    )  # fmt: skip
    result = trainer.fit()
    assert read_metadata(Path(result.export.path))["infer"]["roi_size"] == 16  # what predict and the pyfunc run
    loaded, _ = _logged_model(sqlite_uri)
    rng = np.random.default_rng(4)
    volume = rng.normal(0, 1, (31, 61, 57)).astype(np.float32)
    volume[8:20, 10:40, 5:30] += 3
    images = tmp_path / "volumes"
    images.mkdir()
    np.save(images / "vol.npy", volume)
    out = _predict_cli(result.export.path, images, "masks")

    mask = loaded.predict(volume[None, None])
    assert mask.shape == (1, 31, 61, 57)
    np.testing.assert_array_equal(mask[0], read_mask(out / "vol.tif", 3))
    probabilities = loaded.predict(volume[None, None], params={"output": "probabilities"})
    assert probabilities.shape == (1, 3, 31, 61, 57)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
