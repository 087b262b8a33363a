"""SHA256 fingerprints of samples and of the inputs a dataset keeps, order-independent."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtrack.data.file_digests import file_state, remembered
from segtrack.errors import DataError

FeedFile = Callable[[Any, Path], None]  # feeds one file (its bytes, or its state) into a digest


def sample_digest(image, mask) -> bytes:
    """SHA256 of one sample: its image as float32 bytes, then its mask as int64 bytes."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.asarray(image), dtype=np.float32).data)  # read in place, not copied
    h.update(np.ascontiguousarray(np.asarray(mask), dtype=np.int64).data)
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
    if _holds_arrays(value):  # in memory: reading the bytes is the whole cost, nothing to keep
        return _walked(value, _feed_file)
    # the files' bytes are read once per process while they are unchanged (see file_digests)
    return remembered(lambda: _walked_state(value), lambda: _walked(value, _feed_file))


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


def _holds_arrays(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_holds_arrays(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_arrays(v) for v in value)
    return isinstance(value, (np.ndarray, torch.Tensor))


def _walked(value: Any, feed_file: FeedFile) -> bytes:
    digest = hashlib.sha256()
    _feed_input(digest, value, feed_file)
    return digest.digest()


def _walked_state(value: Any) -> tuple[bytes, int]:
    """The key of ``input_digest(value)`` in ``remembered``: the same walk with each file's state
    (``file_state``) where its bytes would be, and the newest time among those files."""
    newest = 0

    def feed_state(digest: Any, path: Path) -> None:
        nonlocal newest
        state = file_state(path)
        if state is not None:
            newest = max(newest, state.modified_ns, state.changed_ns)
        _frame(digest, b"state", repr(state).encode())

    return b"input:" + _walked(value, feed_state), newest


def _feed_input(digest: Any, value: Any, feed_file: FeedFile) -> None:
    """Each part framed by a type tag and its length, so that no two inputs feed the same bytes."""
    if isinstance(value, Mapping):
        _frame(digest, b"map", str(len(value)).encode())
        for key in sorted(value, key=str):
            _frame(digest, b"key", str(key).encode())
            _feed_input(digest, value[key], feed_file)
    elif isinstance(value, (list, tuple)):
        _frame(digest, b"seq", str(len(value)).encode())
        for item in value:
            _feed_input(digest, item, feed_file)
    elif isinstance(value, torch.Tensor):
        plain = value.as_subclass(torch.Tensor).detach().cpu().contiguous()
        _frame(digest, b"tensor", f"{plain.dtype} {tuple(plain.shape)}".encode())
        _frame(digest, b"bytes", plain.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        _frame(digest, b"array", f"{value.dtype.str} {value.shape}".encode())
        _frame(digest, b"bytes", np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (str, os.PathLike)) and _on_disk(value):
        _feed_path(digest, Path(value), feed_file)
    else:
        _frame(digest, b"repr", repr(os.fspath(value) if isinstance(value, os.PathLike) else value).encode())


def _on_disk(value: str | os.PathLike) -> bool:
    """A path to a regular file or a folder (a FIFO or a device is not read: reading may block)."""
    try:
        return bool(os.fspath(value)) and (os.path.isdir(value) or _regular(Path(value)))
    except (OSError, ValueError, TypeError):  # too long a name, a NUL byte
        return False


def _feed_path(digest: Any, path: Path, feed_file: FeedFile) -> None:
    """A file's bytes; a folder's regular files (e.g. a DICOM series) by relative name and bytes."""
    if not path.is_dir():
        _frame(digest, b"file", b"")
        feed_file(digest, path)
        return
    files = sorted(p for p in path.rglob("*") if _regular(p))
    _frame(digest, b"folder", str(len(files)).encode())
    for file in files:
        _frame(digest, b"name", file.relative_to(path).as_posix().encode())
        feed_file(digest, file)


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
