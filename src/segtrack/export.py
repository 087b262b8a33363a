"""ONNX export of any segmentation model, checked in onnxruntime against torch on a sample batch."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from segtrack.samples import logits_of

log = logging.getLogger("segtrack.export")
METADATA_KEY = "segtrack"


class LogitsOnly(torch.nn.Module):
    """A model whose output is reduced to its logits tensor (torchvision's dicts, tuples)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


def export_onnx(
    model: torch.nn.Module, sample: torch.Tensor, path: Path, opset: int, metadata: dict | None = None
) -> float:
    """Write ``model`` as one self-contained ONNX file, batch and spatial axes dynamic (2D or 3D).
    ``metadata`` is stored as JSON under the model's ``segtrack`` metadata key (what
    ``segtrack predict --onnx`` needs: normalisation, channels, classes, spatial multiple).

    Returns the max abs difference between onnxruntime and torch outputs on ``sample``.
    """
    import onnxruntime

    model = LogitsOnly(model).eval().cpu()
    sample = sample.detach().float().cpu()
    # AUTO: each axis stays dynamic unless the model fixes it (its own divisibility guards are kept)
    dynamic = {"x": {axis: torch.export.Dim.AUTO for axis in (0, *range(2, sample.ndim))}}
    tmp = path.with_name(path.name + ".tmp")
    # the exporter logs a warning per missing torchvision op and per guard it adds; none is actionable
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (sample,),
                dynamo=True,
                dynamic_shapes=dynamic,
                opset_version=opset,
                input_names=["x"],
                output_names=["logits"],
                external_data=False,
                verbose=False,
            )
            if program is None:
                raise RuntimeError("torch.onnx.export returned no program")
            program.save(str(tmp), external_data=False)
        if metadata is not None:
            _add_metadata(tmp, metadata)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"x": sample.numpy()})
    with torch.no_grad():
        torch_out = model(sample).numpy()
    return float(np.max(np.abs(onnx_out - torch_out)))


def _add_metadata(path: Path, metadata: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    onnx.save(proto, str(path))


def read_metadata(path: Path) -> dict | None:
    """The ``segtrack`` metadata of an exported model, or None for another ONNX file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return None


def predict_metadata(config: dict, spatial_multiple: int) -> dict:
    """What inference needs from a fit's settings, to read and pad images as training did."""
    data = config["data"]
    return {
        "dims": data["dims"],
        "in_channels": config["model"]["in_channels"],
        "num_classes": data["num_classes"],
        "normalize": data.get("normalize", "auto"),
        "spatial_multiple": spatial_multiple,
        "class_names": list(data.get("class_names") or []),
    }
