"""``segtrack predict``: masks for a folder of images from a checkpoint or an exported ONNX file,
one file at a time, read, normalised and padded exactly as in training."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segtrack.data.folder import regular_files
from segtrack.data.imageio import (
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    PIL_SUFFIXES,
    file_stem,
    file_suffix,
    nifti_affine,
    read_image,
    write_mask,
    write_png,
)
from segtrack.errors import CheckpointError, ConfigError
from segtrack.inference.palette import colour_mask


class Predictor:
    """The mask (or logits, or class probabilities) of one image ``(C, *spatial)`` float32, from a
    torch model or an ONNX session: in one pass, or window by window with the sliding-window settings
    recorded at training (``infer``). ``prepared`` turns an image as read from its file into that input."""

    def __init__(self, metadata: dict, run: Callable[[np.ndarray], np.ndarray], source: str):
        self.dims, self.channels = metadata["dims"], metadata["in_channels"]
        self.num_classes, self.normalize = metadata["num_classes"], metadata["normalize"]
        self.multiple = max(1, int(metadata.get("spatial_multiple", 1)))
        self.windows: dict | None = metadata.get("infer")
        self.run, self.source = run, source

    def use_windows(self, infer: dict | None, explicit: bool = False) -> None:
        """Window settings given for this prediction (``--set infer.roi_size=...``) replace the recorded
        ones; ``explicit``: the user set ``infer.*`` for this prediction, so ``roi_size = 0`` means the
        whole image even where training recorded windows."""
        from segtrack.inference.export import window_settings

        given = window_settings(infer)
        if given is not None or explicit:
            self.windows = given

    def prepared(self, image: np.ndarray, name: Path | str) -> np.ndarray:
        """An image ``(C, *spatial)`` as read from its file (in its file's dtype: ``auto`` normalises
        8-bit images by 255, others by percentiles) as the network takes it: channels matched to the
        model's, normalised by the recorded ``data.normalize``, contiguous float32. ``name`` names the
        image in errors."""
        from segtrack.data.folder import match_channels, normalize

        image = normalize(match_channels(image, self.channels, name), self.normalize)
        return np.ascontiguousarray(image, dtype=np.float32)

    def mask_of(self, image: np.ndarray) -> np.ndarray:
        """Class ids ``(*spatial)`` (int64) of a prepared image."""
        return self.logits_of(image).argmax(0)

    def probabilities_of(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities ``(K, *spatial)`` float32 (softmax over the classes) of a prepared image."""
        logits = self.logits_of(image)
        exp = np.exp(logits - logits.max(axis=0, keepdims=True))
        return exp / exp.sum(axis=0, keepdims=True)

    def logits_of(self, image: np.ndarray) -> np.ndarray:
        """Logits ``(K, *spatial)`` float32 of a prepared image: window by window, or in one pass on
        the image zero-padded at the end to sides the network takes (then cropped back)."""
        if self.windows:
            return self._windowed_logits(image)
        spatial = image.shape[1:]
        padded = [math.ceil(s / self.multiple) * self.multiple for s in spatial]
        batch = np.zeros((1, image.shape[0], *padded), dtype=np.float32)
        real_area: tuple[Any, ...] = (0, slice(None), *(slice(0, s) for s in spatial))
        batch[real_area] = image
        return self.run(batch)[real_area]

    def _windowed_logits(self, image: np.ndarray) -> np.ndarray:
        import torch

        from segtrack.inference.windowed import sliding_window

        def model(windows: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.run(np.ascontiguousarray(windows.numpy())))

        assert self.windows is not None
        options = {k: self.windows[k] for k in ("overlap", "mode", "batch_size")}
        return sliding_window(model, torch.from_numpy(image)[None], self.windows["roi_size"], **options)[0].numpy()


def _unmasked(recorded: Any, current: Any, key: str) -> Any:
    """``recorded`` (a checkpoint's settings, secrets masked) with each masked value taken from
    ``current`` (this project's settings, .secrets.toml included) at the same key."""
    from segtrack.config.secrets import MASK

    if isinstance(recorded, Mapping):
        here = current if isinstance(current, Mapping) else {}
        return {name: _unmasked(value, here.get(name), f"{key}.{name}") for name, value in recorded.items()}
    if recorded == MASK:
        if current is None or current == MASK:
            raise ConfigError(
                f"{key} is a secret the checkpoint does not hold: define it in configs/.secrets.toml (as for "
                "training) to predict with this checkpoint"
            )
        return current
    return recorded


def from_checkpoint(path: Path, device: str, secrets: Mapping[str, Any] | None = None) -> Predictor:
    import torch

    from segtrack.data.batches import logits_of
    from segtrack.inference.export import predict_metadata
    from segtrack.models.registry import build_model, spatial_multiple
    from segtrack.runtime import checkpoint

    payload = checkpoint.load(path, None)
    config = payload.get("config") or {}
    if not config:
        raise CheckpointError(
            f"{path} was written before checkpoints carried their settings: predict with the "
            f"exported model (--onnx) or train again"
        )
    if "parameters" in payload["model_signature"]:
        raise CheckpointError(
            f"{path} holds a model passed to the trainer from Python, which settings cannot "
            f"rebuild: predict with its exported ONNX file (--onnx)"
        )
    data = config["data"]
    model_config = _unmasked(config["model"], (secrets or {}).get("model"), "model")
    model = build_model(model_config, data["num_classes"], data["dims"])
    model.load_state_dict(payload["model"])
    target = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    model = model.eval().to(target)

    @torch.no_grad()
    def run(batch: np.ndarray) -> np.ndarray:
        return logits_of(model(torch.from_numpy(batch).to(target))).float().cpu().numpy()

    return Predictor(predict_metadata(config, spatial_multiple(model)), run, str(path))


def from_onnx(path: Path) -> Predictor:
    import onnxruntime

    from segtrack.inference.export import read_metadata

    try:
        metadata = read_metadata(path)
    except Exception as exc:
        raise ConfigError(
            f"{path} is not a readable ONNX file ({type(exc).__name__}): pass a file that segtrack exported"
        ) from None
    if metadata is None:
        raise ConfigError(
            f"{path} was not exported by segtrack (no 'segtrack' metadata): predict needs the "
            f"normalisation and classes stored at export"
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        try:
            return session.run(None, {name: batch})[0]
        except Exception as exc:  # onnxruntime's own errors carry no type we can import without it
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"onnxruntime refused an input of shape {tuple(batch.shape)} for {path} ({reason}): check that the "
                f"images have the channels and dimensions the model was trained on"
            ) from None

    return Predictor(metadata, run, str(path))


def input_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise ConfigError(f"--input {folder} {what}: pass a folder of images")
    files = regular_files(folder, IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(
            f"--input {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): pass the folder of images to segment"
        )
    return files


def check_inputs(files: list[Path], predictor: Predictor) -> None:
    """Every input is of the model's dimensionality (read from headers, before any mask is written):
    a PNG or JPEG is one 2D image, never a volume; a volume given to a 2D model is refused too."""
    from segtrack.data.imageio import image_spatial_shape
    from segtrack.errors import DataError

    dims, source = predictor.dims, predictor.source
    if dims == 3:
        flat = [p.name for p in files if file_suffix(p) in PIL_SUFFIXES]
        if flat:
            shown = ", ".join(flat[:3]) + (f" and {len(flat) - 3} more" if len(flat) > 3 else "")
            raise ConfigError(
                f"{shown}: 2D images, but {source} segments 3D volumes: pass volumes (.npy, multi-page .tif)"
            )
    for path in files:
        try:
            image_spatial_shape(path, dims)
        except DataError as exc:
            if "data.dims" not in str(exc):
                raise
            kind = "2D images (H, W[, C])" if dims == 2 else "3D volumes (D, H, W[, C])"
            raise ConfigError(
                f"{path} is not of the model's kind: {source} segments {kind}; pass inputs of that kind"
            ) from None


def check_windows(predictor: Predictor) -> None:
    """The window settings in use fit the model loaded: one side per spatial axis, each a multiple
    of what the model's sides must divide by (as ``train`` checks them)."""
    from segtrack.inference.windowed import check_window_fits

    if predictor.windows:
        check_window_fits(predictor.windows["roi_size"], predictor.multiple, predictor.dims, predictor.source)


def output_folder(folder: Path, inputs: Path) -> Path:
    if folder.resolve() == inputs.resolve():
        raise ConfigError(f"--out {folder} is the input folder: masks would replace the images; choose another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".segtrack-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out {folder} is not a writable folder ({exc.strerror}): choose another folder") from None
    return folder


def mask_name(image_path: Path, dims: int) -> str:
    """Same name; PNG for 2D PNG/JPEG/BMP inputs, NIfTI (``.nii.gz``) for NIfTI, TIFF for TIFF,
    ``.npy`` and other 3D volumes."""
    suffix = file_suffix(image_path)
    if suffix in NIFTI_SUFFIXES:
        return file_stem(image_path) + ".nii.gz"
    return file_stem(image_path) + (".png" if dims == 2 and suffix in PIL_SUFFIXES else ".tif")


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB image (2D, or a volume's middle slice) with the predicted classes blended in."""
    if mask.ndim == 3:
        image, mask = image[:, mask.shape[0] // 2], mask[mask.shape[0] // 2]
    grey = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    low, high = float(grey.min()), float(grey.max())
    rgb = (grey - low) / (high - low or 1.0)
    rgb = (rgb.transpose(1, 2, 0) * 255).astype(np.float32)
    colours = colour_mask(mask).astype(np.float32)
    blended = np.where((mask > 0)[..., None], 0.55 * rgb + 0.45 * colours, rgb)
    return blended.clip(0, 255).astype(np.uint8)


def predict_folder(predictor: Predictor, inputs: Path, out: Path, with_overlay: bool, stream=None) -> int:
    """Write one mask per image of ``inputs`` into ``out``; returns the number written."""
    stream = stream or sys.stderr
    check_windows(predictor)
    files = input_files(inputs)
    check_inputs(files, predictor)
    out = output_folder(out, inputs)
    others = sorted(
        p.name for p in inputs.iterdir() if p.is_file() and not p.name.startswith(".") and p not in set(files)
    )
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        stream.write(f"skipped {len(others)} file(s) that are not images ({', '.join(IMAGE_SUFFIXES)}): {shown}\n")
    interactive = stream.isatty() and not os.environ.get("CI")
    started = time.perf_counter()
    for done, path in enumerate(files, start=1):
        image = predictor.prepared(read_image(path, predictor.dims), path)
        mask = predictor.mask_of(image)
        write_mask(out / mask_name(path, predictor.dims), mask, nifti_affine(path))  # a NIfTI mask keeps its space
        if with_overlay:
            write_png(out / f"{file_stem(path)}_overlay.png", overlay(image, mask))
        if interactive:
            stream.write(f"\rpredict {done}/{len(files)}  {path.name[:40]:<40}")
            stream.flush()
    elapsed = time.perf_counter() - started
    if interactive:
        stream.write("\n")
    stream.write(
        f"predicted {len(files)} mask(s) into {out} in {elapsed:.1f}s "
        f"({len(files) / max(elapsed, 1e-9):.1f} images/s) with {predictor.source}\n"
    )
    stream.flush()
    return len(files)


def check_source(checkpoint_path: str | None, onnx_path: str | None) -> Path:
    given = Path(checkpoint_path or onnx_path or "")
    flag = "--checkpoint" if checkpoint_path else "--onnx"
    if given.is_dir():
        raise ConfigError(f"{flag} {given} is a folder: pass the file (e.g. checkpoints/best.pt or exports/NAME.onnx)")
    if not given.is_file():
        raise ConfigError(f"{flag} {given} does not exist: pass an existing file")
    return given
