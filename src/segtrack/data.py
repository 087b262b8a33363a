"""The configured data (synthetic in memory, a folder, or a named dataset), splits, folds and fingerprints."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segtrack.errors import DataError


class ArrayDataset(Dataset):
    """Images (N, C, H, W) float32 in [0, 1] and masks (N, H, W) int64 class ids, in memory."""

    def __init__(self, images: np.ndarray, masks: np.ndarray):
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        self.masks = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.masks[index]


def synthetic_arrays(num_samples: int, image_size: int, num_classes: int, channels: int, seed: int, dims: int = 2):
    """Deterministic shapes on noise: class k (k >= 1) is a disc/ball or a box with its own colour.

    ``dims = 2`` gives images (N, C, S, S), ``dims = 3`` volumes (N, C, S, S, S)."""
    rng = np.random.default_rng(seed)
    size = image_size
    grid = np.mgrid[(slice(0, size),) * dims]
    palette = rng.uniform(0.35, 1.0, size=(num_classes, channels)).astype(np.float32)
    images = np.empty((num_samples, channels) + (size,) * dims, dtype=np.float32)
    masks = np.zeros((num_samples,) + (size,) * dims, dtype=np.int64)
    for n in range(num_samples):
        image = rng.normal(0.15, 0.08, size=(channels,) + (size,) * dims).astype(np.float32)
        mask = masks[n]
        for cls in range(1, num_classes):
            for _ in range(rng.integers(1, 3)):
                radius = rng.integers(max(2, size // 12), max(3, size // 5))
                centre = rng.integers(radius, size - radius, size=dims)
                offsets = [axis - c for axis, c in zip(grid, centre)]
                if cls % 2:
                    region = sum(o**2 for o in offsets) <= radius**2
                else:
                    region = np.abs(offsets[0]) <= radius
                    for o in offsets[1:]:
                        region &= np.abs(o) <= radius * 0.6
                mask[region] = cls
                image[:, region] = palette[cls][:, None] + rng.normal(0, 0.05, size=(channels, 1))
        images[n] = np.clip(image, 0.0, 1.0)
    return images, masks


def load_arrays(data: dict, model: dict, seed: int):
    """The built-in synthetic images (or volumes) and masks, checked against the UNet's depth."""
    images, masks = synthetic_arrays(
        data["num_samples"], data["image_size"], data["num_classes"], model["in_channels"], seed, data["dims"]
    )
    multiple = 2 ** model["depth"] if model["name"] == "unet" and not model.get("factory") else 1
    sides = masks.shape[1:]
    if any(side % multiple for side in sides):
        size = "x".join(map(str, sides[::-1]))
        raise DataError(
            f"images are {size} but model.depth={model['depth']} needs sides divisible "
            f"by {multiple}: change data.image_size or model.depth"
        )
    return images, masks


def configured_data(config: dict):
    """The data that settings name: ``(train, val, predefined_split)``. ``train`` is an
    ``ArrayDataset`` (synthetic), a ``FolderDataset`` (folder) or what a ``segtrack.datasets``
    entry point or ``data.factory`` returns; ``val`` is None unless that returned a pair."""
    data, model, train = config["data"], config["model"], config["train"]
    if data.get("factory") or data["source"] not in ("synthetic", "folder"):
        from segtrack.registry import build_dataset

        offered = {
            "num_classes": data["num_classes"],
            "in_channels": model["in_channels"],
            "dims": data["dims"],
            "seed": train["seed"],
            "path": data["path"],
            "config": config,
        }
        train_set, val_set = build_dataset(data, offered)
        return train_set, val_set, None
    if data["source"] == "synthetic":
        return ArrayDataset(*load_arrays(data, model, train["seed"])), None, None
    if not data["path"]:
        raise DataError('data.source is "folder" but data.path is empty: set data.path to the dataset folder')
    from segtrack.folder import FolderDataset

    crop = data["crop"] if isinstance(data["crop"], list) else ([data["crop"]] if data["crop"] else None)
    dataset = FolderDataset(
        data["path"],
        dims=data["dims"],
        channels=model["in_channels"],
        normalize=data["normalize"],
        crop=crop,
        augment=train["augment"],
        seed=train["seed"],
        crop_foreground=data["crop_foreground"],
        ignore_index=None if data["ignore_index"] == "none" else data["ignore_index"],
    )
    dataset.check(data["num_classes"], dataset.ignore_index)
    return dataset, None, dataset.predefined_split()


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle, then the first ``val_fraction`` are validation. Both parts non-empty."""
    if count < 2:
        raise DataError(f"the dataset has {count} sample(s): at least 2 are needed (one to train, one to validate)")
    order = np.random.default_rng(seed).permutation(count)
    num_val = min(count - 1, max(1, round(count * val_fraction)))
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def fold_indices(count: int, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """K-fold: the seeded shuffle cut into ``folds`` near-equal parts; part ``fold`` validates."""
    if folds > count:
        raise DataError(f"{folds} folds need at least {folds} samples, the dataset has {count}: lower --folds")
    order = np.random.default_rng(seed).permutation(count)
    parts = np.array_split(order, folds)
    val = parts[fold]
    train = np.concatenate([p for i, p in enumerate(parts) if i != fold])
    return np.sort(train), np.sort(val)


def sample_digest(image, mask) -> bytes:
    """SHA256 of one sample: its image as float32 bytes, then its mask as int64 bytes."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.asarray(image), dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(np.asarray(mask), dtype=np.int64).tobytes())
    return h.digest()


def combine_digests(digests) -> str:
    """SHA256 over sorted per-sample digests: the same set of samples gives the same hex, in any order."""
    total = hashlib.sha256()
    for d in sorted(digests):
        total.update(d)
    return total.hexdigest()


def fingerprint(images: np.ndarray, masks: np.ndarray, indices: Sequence[int]) -> str:
    """Order-independent SHA256 of the samples at ``indices``."""
    return combine_digests(sample_digest(images[i], masks[i]) for i in indices)


def input_digest(value: Any) -> bytes | None:
    """SHA256 of one input of a dataset that keeps its inputs as data (MONAI's ``Dataset``,
    ``CacheDataset`` and ``PersistentDataset`` hold them in ``.data``: dicts of file paths or
    arrays), read without running the dataset's transforms. Paths that exist count by their files'
    bytes (a folder by its files' names and bytes), arrays and tensors by dtype, shape and bytes,
    numbers and other strings by their repr. None when the input holds anything else: an object
    whose repr may differ between runs cannot identify the data."""
    if not plain_input(value):
        return None
    digest = hashlib.sha256()
    _feed_input(digest, value)
    return digest.digest()


def plain_input(value: Any) -> bool:
    """Whether ``input_digest`` can hash ``value``: dicts, lists and tuples of paths, strings,
    numbers, arrays and tensors (nothing is read)."""
    if isinstance(value, Mapping):
        return all(plain_input(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(plain_input(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.dtype != object  # an object array's bytes are pointers
    scalars = (str, bytes, bool, int, float, complex, np.generic, torch.Tensor, os.PathLike)
    return value is None or isinstance(value, scalars)


def _feed_input(digest: Any, value: Any) -> None:
    """Each part framed by a type tag and its length, so that no two inputs feed the same bytes."""
    if isinstance(value, Mapping):
        _frame(digest, b"map", str(len(value)).encode())
        for key in sorted(value, key=str):
            _frame(digest, b"key", str(key).encode())
            _feed_input(digest, value[key])
    elif isinstance(value, (list, tuple)):
        _frame(digest, b"seq", str(len(value)).encode())
        for item in value:
            _feed_input(digest, item)
    elif isinstance(value, torch.Tensor):
        plain = value.as_subclass(torch.Tensor).detach().cpu().contiguous()
        _frame(digest, b"tensor", f"{plain.dtype} {tuple(plain.shape)}".encode())
        _frame(digest, b"bytes", plain.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        _frame(digest, b"array", f"{value.dtype.str} {value.shape}".encode())
        _frame(digest, b"bytes", np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (str, os.PathLike)) and _on_disk(value):
        _feed_path(digest, Path(value))
    else:
        _frame(digest, b"repr", repr(os.fspath(value) if isinstance(value, os.PathLike) else value).encode())


def _on_disk(value: str | os.PathLike) -> bool:
    """A path to a regular file or a folder (a FIFO or a device is not read: reading may block)."""
    try:
        return bool(os.fspath(value)) and (os.path.isdir(value) or _regular(Path(value)))
    except (OSError, ValueError, TypeError):  # too long a name, a NUL byte
        return False


def _feed_path(digest: Any, path: Path) -> None:
    """A file's bytes; a folder's regular files (e.g. a DICOM series) by relative name and bytes."""
    if not path.is_dir():
        _frame(digest, b"file", b"")
        _feed_file(digest, path)
        return
    files = sorted(p for p in path.rglob("*") if _regular(p))
    _frame(digest, b"folder", str(len(files)).encode())
    for file in files:
        _frame(digest, b"name", file.relative_to(path).as_posix().encode())
        _feed_file(digest, file)


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:  # missing, or a broken link
        return False


def _feed_file(digest: Any, path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            _frame(digest, b"size", str(os.fstat(fh.fileno()).st_size).encode())
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}: replace or remove the file") from None


def _frame(digest: Any, tag: bytes, payload: bytes) -> None:
    digest.update(tag + b":" + len(payload).to_bytes(8, "little") + payload)
