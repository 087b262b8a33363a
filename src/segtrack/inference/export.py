"""ONNX export of any segmentation model, checked in onnxruntime against torch on a sample batch."""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from segtrack.data.batches import logits_of
from segtrack.plugins.records import ExportInfo

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
    model: torch.nn.Module,
    sample: torch.Tensor,
    path: Path,
    opset: int,
    metadata: dict | None = None,
    windows: Mapping[str, Any] | None = None,
) -> tuple[float, float]:
    """Write ``model`` as one self-contained ONNX file, batch and spatial axes dynamic (2D or 3D).
    ``metadata`` is stored as JSON under the model's ``segtrack`` metadata key (what
    ``segtrack predict --onnx`` needs: normalisation, channels, classes, spatial multiple, the
    inference settings).

    Returns the max abs difference between onnxruntime and torch outputs on the input the model
    was traced on and the largest magnitude of torch's logits (the scale ``export.tolerance`` is
    relative to). With ``windows`` (the ``infer`` settings, ``roi_size`` set) that input is the
    sample's first window: predict runs the network window by window and blends both the same way,
    so one window tells the network's difference; running every window of a validation volume
    through both took 10 s for a 1M-parameter 3D network.
    """
    model = LogitsOnly(model).eval().cpu()
    sample = sample.detach().float().cpu()
    roi = windows.get("roi_size") if windows else None
    traced = _first_window(sample, roi) if roi else sample
    _write_onnx(model, traced, path, opset, metadata)
    return _parity(model, traced, path)


def _write_onnx(model: torch.nn.Module, traced: torch.Tensor, path: Path, opset: int, metadata: dict | None) -> None:
    """Trace ``model`` on ``traced`` and write the file atomically (a temporary file, then a rename)."""
    # AUTO: each axis stays dynamic unless the model fixes it (its own divisibility guards are kept)
    dynamic = {"x": {axis: torch.export.Dim.AUTO for axis in (0, *range(2, traced.ndim))}}
    tmp = path.with_name(path.name + ".tmp")
    # the exporter logs a warning per missing torchvision op and per guard it adds; none is actionable
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (traced,),
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


def _parity(model: torch.nn.Module, inputs: torch.Tensor, path: Path) -> tuple[float, float]:
    """Max abs difference of onnxruntime's and torch's logits for ``inputs``, and torch's largest
    logit magnitude."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many threads as torch: no more
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        torch_out = model(inputs)
    onnx_out = torch.from_numpy(session.run(None, {"x": inputs.numpy()})[0])
    return float((onnx_out - torch_out).abs().max()), float(torch_out.abs().max())


def parity_holds(diff: float, scale: float, tolerance: float) -> bool:
    """``export.tolerance`` is relative to the logits' scale (their largest magnitude, at least 1):
    float32 rounding grows with the values, so a large-logit model (DynUNet) passes as a small one does."""
    return diff <= tolerance * max(1.0, scale)


def _first_window(sample: torch.Tensor, roi: int | Sequence[int]) -> torch.Tensor:
    """The sample's first window (zero-padded where the sample is smaller): the tracing input."""
    spatial = sample.shape[2:]
    sides = [roi] * len(spatial) if isinstance(roi, int) else list(roi)
    window = sample[(slice(None), slice(None), *(slice(0, side) for side in sides))]
    missing = [side - have for side, have in zip(sides, window.shape[2:])]
    widths = [w for m in reversed(missing) for w in (0, max(0, m))]
    return torch.nn.functional.pad(window, widths) if any(missing) else window


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


def predict_metadata(config: Mapping[str, Any], spatial_multiple: int, in_channels: int | None = None) -> dict:
    """What inference needs from a fit's settings, to read and pad images as training did.
    ``in_channels``: what the model takes, where it is known (an export's input), else ``model.in_channels``."""
    data = config["data"]
    return {
        "dims": data["dims"],
        "in_channels": in_channels if in_channels is not None else config["model"]["in_channels"],
        "num_classes": data["num_classes"],
        "normalize": data.get("normalize", "auto"),
        "spatial_multiple": spatial_multiple,
        "class_names": list(data.get("class_names") or []),
        "infer": window_settings(config.get("infer")),
    }


def window_settings(infer: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The sliding-window settings inference needs, or None for whole-image inference."""
    if not infer or not infer.get("roi_size"):
        return None
    return {key: infer[key] for key in ("roi_size", "overlap", "mode", "batch_size")}


def export_checkpoint(
    model: torch.nn.Module,
    checkpoint_path: str,
    signature: dict,
    path: Path,
    sample: torch.Tensor,
    config: Mapping[str, Any],
) -> tuple[ExportInfo | None, str | None]:
    """The weights of ``checkpoint_path`` in a CPU copy of ``model``, exported to ``path`` and checked
    in onnxruntime (``export.opset``, ``export.tolerance``, windows per ``infer``). A model that
    cannot be exported gives one warning and ``(None, reason)``: the fit and its checkpoints stay valid."""
    from segtrack.models.registry import spatial_multiple
    from segtrack.runtime import checkpoint

    settings = config["export"]
    payload = checkpoint.load(checkpoint_path, signature)
    model = copy.deepcopy(model).cpu()
    model.load_state_dict(payload["model"])
    try:
        metadata = predict_metadata(config, spatial_multiple(model), in_channels=int(sample.shape[1]))
        diff, scale = export_onnx(
            model, sample, path, settings["opset"], metadata, window_settings(config.get("infer"))
        )
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        log.warning(
            "ONNX export skipped: this model cannot be exported (%s: %s); the fit and its checkpoints "
            "are fine (%s); set export.enabled = false to silence this",
            type(exc).__name__,
            reason,
            checkpoint_path,
        )
        return None, f"{type(exc).__name__}: {reason}"
    ok = parity_holds(diff, scale, settings["tolerance"])
    if not ok:
        log.warning(
            "ONNX export %s differs from torch by %.3g, above export.tolerance %.3g x the logits' scale %.3g: "
            "check the model's predictions before serving it (its tracker marks it)",
            path,
            diff,
            settings["tolerance"],
            max(1.0, scale),
        )
    info = ExportInfo(
        path=str(path),
        format="onnx",
        opset=settings["opset"],
        epoch=payload["epoch"],
        input_shape=tuple(sample.shape),
        max_abs_diff=diff,
        parity_ok=ok,
        logit_scale=scale,
        tolerance=float(settings["tolerance"]),
    )
    return info, None
