"""Sliding-window (tiled) inference: a model's logits for images too large for one forward pass,
blended from overlapping windows."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from segtrack.data.batches import logits_of
from segtrack.errors import ConfigError, DataError, ModelError

MODES = ("gaussian", "constant")
WEIGHT_FLOOR = 1e-3  # least gaussian weight, so a voxel seen only at windows' edges still gets logits

Window = tuple[slice, ...]


def sliding_window(
    model: Callable[[torch.Tensor], Any],
    image: torch.Tensor,
    roi_size: int | Sequence[int | None] | None,
    overlap: float = 0.5,
    mode: str = "gaussian",
    batch_size: int = 4,
    *,
    sigma_scale: float = 0.125,
    device: torch.device | str | None = None,
    output_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Float32 logits ``(N, K, *spatial)`` of ``model`` for ``image`` ``(N, C, *spatial)``, run window by window.

    ``roi_size`` is one window side for every spatial axis or one per axis; 0 or None takes the whole
    axis. Windows start at 0 and step ``int(side * (1 - overlap))`` (at least 1), the last one ending
    at the border; an axis shorter than its window is padded with zeros on both sides (half before,
    as MONAI pads), and the output is cropped back. A voxel's logits are the mean of those of the
    windows covering it, weighted by a Gaussian centred on each window (``sigma = sigma_scale * side``)
    or, with ``mode="constant"``, equally. One window per image gives exactly the model's output for the (padded) image.

    Windows of all images are run ``batch_size`` at a time on ``device`` (default: the model's
    parameters' device, else the image's); the sums live on ``output_device`` (default: the image's).
    Grad mode and autocast are the caller's; window results are detached as they are added.
    """
    image = torch.as_tensor(image).as_subclass(torch.Tensor)  # MetaTensor and other subclasses: a plain tensor
    if image.ndim < 3 or image.numel() == 0:
        raise DataError(
            f"sliding_window got an image of shape {tuple(image.shape)}: pass a non-empty (N, C, *spatial) tensor"
        )
    spatial = tuple(image.shape[2:])
    sides = _window_sides(roi_size, spatial)
    _check_arguments(overlap, mode, batch_size, sigma_scale)
    output_device = torch.device(output_device) if output_device is not None else image.device
    device = torch.device(device) if device is not None else _model_device(model, image.device)

    padded, windows, before = _padded_windows(image, sides, overlap)
    # each window's weights, and their sum per voxel (the same for every image and class)
    weight = _importance_map(sides, mode if len(windows) > 1 else "constant", sigma_scale, output_device)
    weight_sum = torch.zeros(padded.shape[2:], device=output_device)
    for window in windows:
        weight_sum[window].add_(weight)
    total = _weighted_sum(model, padded, windows, weight, batch_size, device, output_device)
    total.div_(weight_sum)
    if tuple(padded.shape[2:]) == spatial:
        return total
    return total[(slice(None), slice(None), *(slice(b, b + size) for b, size in zip(before, spatial)))].contiguous()


def _padded_windows(
    image: torch.Tensor, sides: tuple[int, ...], overlap: float
) -> tuple[torch.Tensor, list[Window], tuple[int, ...]]:
    """The image with axes shorter than the window padded with zeros on both sides (half before,
    the rest after: as MONAI's ``sliding_window_inference`` pads, so both give the same logits on
    any size), the windows of one image (starting at 0, every ``side * (1 - overlap)``, the last
    one flush with the border), and the padding before each axis (to crop the result back)."""
    spatial = tuple(image.shape[2:])
    short = [max(side - size, 0) for size, side in zip(spatial, sides)]
    before = tuple(missing // 2 for missing in short)
    pad = [amount for missing, b in zip(reversed(short), reversed(before)) for amount in (b, missing - b)]
    padded = F.pad(image, pad) if any(pad) else image
    padded_size = tuple(padded.shape[2:])
    corners = itertools.product(*(_starts(full, side, overlap) for full, side in zip(padded_size, sides)))
    windows = [tuple(slice(start, start + side) for start, side in zip(corner, sides)) for corner in corners]
    return padded, windows, before


def _weighted_sum(
    model: Callable[[torch.Tensor], Any],
    padded: torch.Tensor,
    windows: list[Window],
    weight: torch.Tensor,
    batch_size: int,
    device: torch.device,
    output_device: torch.device,
) -> torch.Tensor:
    """Every window of every image through the model, ``batch_size`` at a time on ``device``; their
    logits times ``weight`` summed into one float32 tensor on ``output_device``."""
    sides = tuple(weight.shape)
    jobs = [(index, (slice(None), *window)) for index in range(len(padded)) for window in windows]
    total: torch.Tensor | None = None
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first : first + batch_size]
        batch = torch.stack([padded[index][channels_window] for index, channels_window in chunk]).to(device)
        logits = logits_of(model(batch)).detach()
        if tuple(logits.shape[2:]) != sides or len(logits) != len(chunk):
            raise ModelError(
                f"the model returned logits of shape {tuple(logits.shape)} for windows of shape "
                f"{tuple(batch.shape)}: sliding_window needs one full-resolution result per window"
            )
        if total is None:
            total = torch.zeros((len(padded), logits.shape[1], *padded.shape[2:]), device=output_device)
        for (index, channels_window), part in zip(chunk, logits.to(output_device)):
            total[index][channels_window].addcmul_(part, weight)  # float32 sums even for float16 logits
    assert total is not None  # the image is not empty, so there was at least one window
    return total


def _window_sides(roi_size: int | Sequence[int | None] | None, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """One window side per spatial axis; 0 or None stands for the whole axis."""
    given = list(roi_size) if isinstance(roi_size, Sequence) else [roi_size] * len(spatial)
    if len(given) != len(spatial):
        raise ConfigError(
            f"sliding_window roi_size={roi_size!r} has {len(given)} sides for an image of {len(spatial)} spatial "
            f"axes {spatial}: give one side per axis, or a single int"
        )
    sides = []
    for side, size in zip(given, spatial):
        try:
            value = 0 if side is None else operator.index(side)
        except TypeError:
            value = -1
        if value < 0:
            raise ConfigError(
                f"sliding_window roi_size={roi_size!r} holds {side!r}: window sides are positive ints "
                f"(0 or None for the whole axis)"
            )
        sides.append(value or size)
    return tuple(sides)


def _check_arguments(overlap: float, mode: str, batch_size: int, sigma_scale: float) -> None:
    if mode not in MODES:
        raise ConfigError(f"sliding_window mode={mode!r} is not supported: use 'gaussian' or 'constant'")
    if not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise ConfigError(
            f"sliding_window overlap={overlap!r} is outside [0, 1): give the fraction of a window that its "
            f"neighbour shares, e.g. 0.5"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"sliding_window batch_size={batch_size!r} is not a positive int: use 1 or more")
    if not isinstance(sigma_scale, (int, float)) or sigma_scale <= 0:
        raise ConfigError(
            f"sliding_window sigma_scale={sigma_scale!r} is not positive: give sigma as a fraction of the "
            f"window side, e.g. 0.125"
        )


def _model_device(model: Callable[[torch.Tensor], Any], fallback: torch.device) -> torch.device:
    """Where a module's parameters (or buffers) are; ``fallback`` for a plain function or a stateless module."""
    if isinstance(model, torch.nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return fallback


def _starts(size: int, side: int, overlap: float) -> list[int]:
    """Window starts along one axis: every step from 0, the last window ending at the border."""
    step = max(1, int(side * (1 - overlap)))
    return [*range(0, size - side, step), size - side]


def _importance_map(sides: tuple[int, ...], mode: str, sigma_scale: float, device: torch.device) -> torch.Tensor:
    """A window's weights: ones, or a separable Gaussian centred on the window, max 1, floor ``WEIGHT_FLOOR``."""
    if mode == "constant":
        return torch.ones(sides, device=device)
    weight = torch.ones((), device=device)
    for side in sides:
        offset = torch.arange(side, dtype=torch.float32, device=device) - (side - 1) / 2
        curve = torch.exp(-0.5 * (offset / (sigma_scale * side)) ** 2)
        weight = weight.unsqueeze(-1) * (curve / curve.max())  # outer product, one axis at a time
    return weight.clamp_(min=WEIGHT_FLOOR)


def check_window_fits(roi_size: Any, multiple: int, dims: int | None = None, model: str = "the model") -> None:
    """``infer.roi_size`` fits ``model``: one side per spatial axis (``dims``, where known), each side
    a multiple of what the model's sides must divide by; one ConfigError naming the fix."""
    from segtrack.errors import ConfigError

    sides = list(roi_size) if isinstance(roi_size, (list, tuple)) else [roi_size]
    if dims is not None and isinstance(roi_size, (list, tuple)) and len(sides) != dims:
        raise ConfigError(
            f"infer.roi_size = {list(roi_size)!r} has {len(sides)} sides but {model} is {dims}D: give {dims} sides, "
            "or a single number"
        )
    bad = [side for side in sides if side and side % multiple]
    if bad:
        fixed = [-(-side // multiple) * multiple if side else 0 for side in sides]
        raise ConfigError(
            f"infer.roi_size = {roi_size!r} has sides {model} cannot take (they must divide by {multiple}): "
            f"use {fixed if isinstance(roi_size, (list, tuple)) else fixed[0]}"
        )
