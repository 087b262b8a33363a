"""What a user's data and model hand the loop, brought to one form: images ``(N, C, *spatial)``
float32, masks ``(N, *spatial)`` int64 class ids (-1 where ignored), logits ``(N, K, *spatial)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from segtrack.errors import DataError, ModelError

IGNORED = -1  # mask value the loss and every metric leave out


def split_sample(item: Any) -> tuple[Any, Any]:
    """``(image, mask)`` of a sample or batch given as a pair or as a dict (``"mask"`` or MONAI's ``"label"``)."""
    if isinstance(item, Mapping):
        if "image" not in item or not ("mask" in item or "label" in item):
            raise DataError(
                f'a sample dict needs keys "image" and "mask" (or "label"); this one has '
                f"{sorted(map(str, item))}: rename the keys in your dataset"
            )
        return item["image"], item["mask"] if "mask" in item else item["label"]
    if isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and len(item) >= 2:
        return item[0], item[1]
    raise DataError(
        f'a sample must be an (image, mask) pair or a dict with "image" and "mask"; got '
        f"{type(item).__name__}: make your dataset's __getitem__ return one of those"
    )


def is_crop_list(item: Any) -> bool:
    """Whether ``item`` is a list of samples (or of batches) rather than one: a list or tuple whose
    items are all dicts, or all ``(image, mask)`` pairs of arrays or tensors. MONAI's
    ``RandCropByPosNegLabeld(num_samples=N)`` makes each dataset item such a list of N dicts. A
    plain ``(image, mask)`` pair holds arrays, not pairs, so it is never taken for a list."""
    if not isinstance(item, (list, tuple)) or not item:
        return False
    return all(isinstance(x, Mapping) for x in item) or all(_is_array_pair(x) for x in item)


def crops_of(item: Any) -> list[Any]:
    """The samples one dataset item holds: the item itself, or each crop of a list of crops."""
    return list(item) if is_crop_list(item) else [item]


def as_pair(item: Any, dims: int, batched: bool, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample (``batched=False``) or one batch in the loop's form; a clear error otherwise.

    A batch may be a list of crop batches (what ``default_collate`` makes of items that are lists
    of crops): they are joined along the batch axis. Tensor subclasses (MONAI's ``MetaTensor``)
    come back as plain tensors, so nothing downstream carries their metadata."""
    if is_crop_list(item):
        if not batched:
            raise DataError(
                f"a sample holds {len(item)} crops where one sample was expected: read its samples with "
                f"segtrack.data.batches.crops_of"
            )
        return _joined([as_pair(crop, dims, True, ignore_index) for crop in item])
    image, mask = (_plain_tensor(x) for x in split_sample(item))
    lead = 1 if batched else 0
    what = "batch" if batched else "sample"
    if image.ndim == lead + dims:  # no channel axis: one channel
        image = image.unsqueeze(lead)
    if image.ndim != lead + 1 + dims:
        raise DataError(
            f"a {what}'s image has shape {tuple(image.shape)}, but data.dims = {dims} needs "
            f"{'(N, ' if batched else '('}C, {_axes(dims)}): set data.dims or reshape the images"
        )
    if mask.ndim == image.ndim:
        if mask.shape[lead] != 1:
            raise DataError(
                f"a {what}'s mask has shape {tuple(mask.shape)}: masks hold class ids, one channel at "
                f"most; convert one-hot masks with argmax over the channel axis"
            )
        mask = mask.squeeze(lead)
    if tuple(mask.shape[lead:]) != tuple(image.shape[lead + 1 :]):
        raise DataError(
            f"a {what}'s image is {_size(image.shape[lead + 1 :])} but its mask is "
            f"{_size(mask.shape[lead:])}: each mask must have its image's size"
        )
    if mask.is_floating_point():
        mask = mask.round()
    mask = mask.long()
    if ignore_index is not None:
        mask = mask.masked_fill(mask == ignore_index, IGNORED)
    return image.float(), mask


def check_class_ids(masks: torch.Tensor, num_classes: int, ignore_index: int | None) -> int:
    """Every mask value is a class id below ``num_classes`` or ignored (-1: ``data.ignore_index``
    mapped by ``as_pair``, or padding). Returns the largest value (-1: nothing is labelled)."""
    low, high = torch.aminmax(masks)
    if int(low) >= IGNORED and int(high) < num_classes:
        return int(high)
    bad = masks[(masks >= num_classes) | (masks < IGNORED)].unique()
    ignore = f"data.ignore_index = {ignore_index}" if ignore_index is not None else "data.ignore_index is not set"
    raise DataError(
        f"a mask holds class ids {bad.tolist()[:5]} outside 0..{num_classes - 1} ({ignore}): "
        f"fix the masks, raise data.num_classes, or set data.ignore_index to the id to leave out"
    )


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: a tensor, a dict's ``"out"`` (torchvision), or a sequence's first item."""
    if isinstance(output, Mapping):
        if "out" not in output:
            raise ModelError(
                f"the model returned a dict with keys {sorted(map(str, output))}: segtrack reads the "
                f'logits from key "out"; return a tensor or a dict with "out"'
            )
        output = output["out"]
    elif isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise ModelError(
            f"the model returned {type(output).__name__}, not logits: forward() must return a tensor "
            f'(N, num_classes, ...), a dict holding it under "out", or a tuple starting with it'
        )
    return output


def check_logits(logits: torch.Tensor, masks: torch.Tensor, num_classes: int) -> None:
    """Before the first optimizer step: the model's output fits ``num_classes`` and the masks."""
    if logits.ndim != masks.ndim + 1 or logits.shape[1] != num_classes:
        raise ModelError(
            f"the model outputs shape {tuple(logits.shape)}, i.e. {logits.shape[1] if logits.ndim > 1 else '?'} "
            f"channels, but data.num_classes = {num_classes}: build the model with {num_classes} "
            f"output channels or set data.num_classes"
        )
    if logits.shape[2:] != masks.shape[1:]:
        raise ModelError(
            f"the model outputs logits of size {_size(logits.shape[2:])} for masks of size "
            f"{_size(masks.shape[1:])}: the model must return full-resolution logits"
        )


def _axes(dims: int) -> str:
    return "H, W" if dims == 2 else "D, H, W"


def _size(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _is_array_pair(item: Any) -> bool:
    return (
        isinstance(item, (list, tuple))
        and len(item) >= 2
        and all(isinstance(x, (torch.Tensor, np.ndarray)) for x in item[:2])
    )


def _plain_tensor(value: Any) -> torch.Tensor:
    """A plain ``torch.Tensor`` (no copy): arrays converted, subclasses such as MONAI's
    ``MetaTensor`` stripped of their type (their ops would carry metadata into every result)."""
    if not isinstance(value, torch.Tensor):
        return torch.as_tensor(np.asarray(value))
    return value if type(value) is torch.Tensor else value.as_subclass(torch.Tensor)


def _joined(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop batches joined into one batch; they must share a size (crops of one recipe do)."""
    sizes = {tuple(masks.shape[1:]) for _, masks in parts}
    if len(sizes) > 1:
        raise DataError(
            f"the crops of one batch have different sizes ({', '.join(_size(s) for s in sorted(sizes))}): "
            f"crop every sample of a batch to one size"
        )
    return torch.cat([images for images, _ in parts]), torch.cat([masks for _, masks in parts])


def to_loop_form(
    batch: Any, dims: int, num_classes: int, ignore_index: int | None, where: torch.device
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """A batch as ``(images, masks)`` on ``where``, class ids checked on the CPU before the copy,
    and whether any of its pixels is labelled (not ignored)."""
    images, masks = as_pair(batch, dims, batched=True, ignore_index=ignore_index)
    labelled = check_class_ids(masks, num_classes, ignore_index) >= 0
    return images.to(where, non_blocking=True), masks.to(where, non_blocking=True), labelled
