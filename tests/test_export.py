"""ONNX export of the best model, checked in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime
import torch

from segtrack.models.registry import build_model
from testsupport.plugins import Recorder


def test_export_matches_torch_and_accepts_other_shapes(trainer_factory, tmp_path):
    recorder = Recorder()
    result = trainer_factory("export.enabled=true", plugins=[recorder]).fit()
    export = result.export
    assert export.parity_ok and export.max_abs_diff < 1e-4 and export.input_shape == (4, 3, 16, 16)
    assert [n for n in recorder.names() if n in ("model_exported", "fit_end")] == ["model_exported", "fit_end"]
    assert not list(tmp_path.glob("exports/*.data"))  # one self-contained file

    session = onnxruntime.InferenceSession(export.path, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).random((3, 3, 24, 32), dtype=np.float32)  # other batch and spatial size
    (onnx_out,) = session.run(None, {"x": batch})
    model = build_model({"name": "unet", "in_channels": 3, "width": 4, "depth": 1}, 3, 2)
    model.load_state_dict(torch.load(result.best_checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        torch_out = model.eval()(torch.from_numpy(batch)).numpy()
    assert np.max(np.abs(onnx_out - torch_out)) < 1e-4
