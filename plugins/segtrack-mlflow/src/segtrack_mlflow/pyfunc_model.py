"""The LoggedModel's pyfunc, an MLflow "model from code": MLflow copies this file into the model
folder and runs it when the model is saved and when it is loaded (nothing is pickled); it needs
segtrack, not this plugin. ``predict`` gives what ``segtrack predict`` gives: segtrack's own ONNX
predictor, built from the model file in the artifacts, normalises each image as training did, runs
the recorded sliding windows (or one padded pass) and returns the mask.

Input: float32 ``(N, C, *spatial)``, a batch of images of any spatial size, their values as read
from their files (one image: ``image[None]``). Params: ``output``: ``"mask"`` (the default), int64
class ids ``(N, *spatial)``, or ``"probabilities"``, float32 ``(N, K, *spatial)`` summing to 1 over
the K classes; ``image_dtype``: the dtype the images had in their files before the cast to float32
(default ``"float32"``; ``"uint8"`` normalises 8-bit images as predict does, ``auto``: by 255)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

ARTIFACT = "onnx_model"  # the key logged_model.py saves the ONNX file under
OUTPUTS = ("mask", "probabilities")


class SegtrackModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from segtrack import from_onnx

        self.predictor = from_onnx(Path(context.artifacts[ARTIFACT]))

    # the input's type hint is ndarray: MLflow then checks the input against the saved signature only
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        options = {"output": "mask", "image_dtype": "float32", **(params or {})}
        if options["output"] not in OUTPUTS:
            raise MlflowException.invalid_parameter_value(
                f"params output={options['output']!r} is not one of {', '.join(OUTPUTS)}: ask for the mask "
                f"(class ids) or the probabilities (one per class)"
            )
        images = np.asarray(model_input["x"] if isinstance(model_input, dict) else model_input)
        predictor = self.predictor
        if images.ndim != predictor.dims + 2 or not len(images):
            layout = "(N, C, H, W)" if predictor.dims == 2 else "(N, C, D, H, W)"
            raise MlflowException.invalid_parameter_value(
                f"an input of shape {images.shape}: this model takes a batch {layout}; give one image as image[None]"
            )
        dtype = _file_dtype(options["image_dtype"])
        results = []
        for index, image in enumerate(images):
            as_read = image.astype(dtype)
            if dtype.kind in "iu" and not np.array_equal(as_read, image):
                raise MlflowException.invalid_parameter_value(
                    f"image {index} holds values that are not {dtype} (non-integers or out of range): pass the "
                    f"values as read from the file, or leave image_dtype at float32"
                )
            prepared = predictor.prepared(as_read, f"image {index}")
            if options["output"] == "mask":
                results.append(predictor.mask_of(prepared))
            else:
                results.append(predictor.probabilities_of(prepared))
        return np.stack(results)


def _file_dtype(name: str) -> np.dtype:
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = np.dtype(object)
    if dtype.kind not in "iuf":
        raise MlflowException.invalid_parameter_value(
            f"params image_dtype={name!r} is not a numeric dtype: give the dtype of the image files, e.g. "
            f"uint8, uint16, float32"
        )
    return dtype


set_model(SegtrackModel())
