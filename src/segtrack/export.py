"""ONNX export of a model, checked in onnxruntime against torch on a held batch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("segtrack.export")


def export_onnx(model: torch.nn.Module, sample: torch.Tensor, path: Path, opset: int) -> float:
    """Write ``model`` as one self-contained ONNX file with dynamic batch and spatial axes.

    Returns the max abs difference between onnxruntime and torch outputs on ``sample``.
    """
    import onnxruntime

    model = model.eval().cpu()
    sample = sample.detach().float().cpu()
    batch = torch.export.Dim("batch", min=1, max=4096)
    height = torch.export.Dim("height_div", min=1, max=1024)
    width = torch.export.Dim("width_div", min=1, max=1024)
    depth_multiple = _spatial_multiple(model)
    dynamic = {"x": {0: batch, 2: depth_multiple * height, 3: depth_multiple * width}}
    tmp = path.with_name(path.name + ".tmp")
    # the exporter logs a warning per missing torchvision op; torchvision is not used here
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # torch.export / onnxscript chatter, not actionable for the user
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (sample,), dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
            input_names=["x"], output_names=["logits"], external_data=False, verbose=False,
        )
        program.save(str(tmp), external_data=False)
    tmp.replace(path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"x": sample.numpy()})
    with torch.no_grad():
        torch_out = model(sample).numpy()
    return float(np.max(np.abs(onnx_out - torch_out)))


def _spatial_multiple(model: torch.nn.Module) -> int:
    depth = len(getattr(model, "up", [])) or 0
    return 2**depth
