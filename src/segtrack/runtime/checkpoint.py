"""Checkpoints as plain dicts: written atomically (one state as best/last/epoch files, made durable
in the background), read with ``weights_only=True`` only, and found again when a fit resumes."""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import torch

from segtrack.errors import CheckpointError

FORMAT = "segtrack.checkpoint"
VERSION = 1


def ensure_writable_dir(path: str | os.PathLike, setting: str) -> Path:
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".segtrack-probe-", delete=True):
            pass
    except OSError as exc:
        raise CheckpointError(
            f"{setting} = {str(folder)!r} is not a writable folder ({exc.strerror}): "
            f"choose another folder or fix its permissions"
        ) from None
    return folder


def identity(path: str | None) -> str:
    """What a rank sees at ``path``, comparable across ranks: "none", "missing <path>" or
    "<name>, <size> bytes" (the same file on a shared folder has the same size everywhere)."""
    if path is None:
        return "none"
    file = Path(path)
    if not file.is_file():
        return f"missing {path}"
    return f"{file.name}, {file.stat().st_size} bytes"


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Temp files of writes that a killed process never finished (the real files are intact)."""
    stale = [p for p in folder.glob(".*.pt.*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _serialised(payload: dict[str, Any], target: Path) -> Path:
    """``payload`` written and flushed to a temp file beside ``target`` (not yet durable)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    writer = None
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = _ErrorKeepingWriter(fh)
            torch.save(payload, cast(IO[bytes], writer))
            fh.flush()
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, RuntimeError) and writer is not None and writer.error is not None:
            raise writer.error from None  # torch's zip writer reports a refused write as a position mismatch
        raise
    return Path(tmp)


def _made_durable(tmp: Path, target: Path) -> int:
    """fsync the temp file, rename it over ``target``, fsync the folder. Returns the size."""
    try:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target.stat().st_size


class _ErrorKeepingWriter:
    """A file for ``torch.save`` that remembers the OSError of a refused write (a full disk)."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def link_atomic(source: Path, target: Path) -> int:
    """Give the just-written ``source`` a second name, atomically (hard link, else a copy).

    A later rename over ``source`` replaces only that name, so ``target`` keeps its content."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)
    return target.stat().st_size


def load(path: str | os.PathLike, signature: dict[str, Any] | None) -> dict[str, Any]:
    """Read a segtrack checkpoint safely and check that it belongs to a model with ``signature``
    (``None``: any model)."""
    source = Path(path)
    if source.is_dir():
        raise CheckpointError(
            f"checkpoint {str(source)!r} is a folder: pass the checkpoint file inside it "
            f"(e.g. {str(source / 'last.pt')!r}) or --resume auto"
        )
    if not source.is_file():
        raise CheckpointError(f"checkpoint {str(source)!r} does not exist: pass an existing file or --resume auto")
    corrupt = CheckpointError(
        f"checkpoint {str(source)!r} is corrupt or truncated: resume from another checkpoint "
        f"(e.g. best.pt) or start fresh"
    )
    if not zipfile.is_zipfile(source):  # torch.save writes a zip archive
        raise corrupt
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next(
            (line.strip() for line in str(exc).splitlines() if "Unsupported global" in line),
            "objects other than tensors and plain data",
        )
        raise CheckpointError(
            f"checkpoint {str(source)!r} was refused without running it ({detail}): only load "
            f"checkpoints written by segtrack"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError):
        raise corrupt from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(source)!r} is not a segtrack checkpoint: pass a file written by segtrack")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{str(source)!r} has checkpoint version {payload.get('version')!r}; this segtrack reads "
            f"version {VERSION}: resume with the segtrack version that wrote it"
        )
    if signature is not None and payload.get("model_signature") != signature:
        raise CheckpointError(
            f"{str(source)!r} is from another model ({payload.get('model_signature')}) than the configured one "
            f"({signature}): use the settings it was trained with, or start fresh"
        )
    return payload


def signature_of(path: Path) -> dict[str, Any] | None:
    """The model signature a segtrack checkpoint records, or None (no such file, unreadable)."""
    payload = _payload_header(path)
    return payload.get("model_signature") if payload is not None else None


def describe_signature(signature: dict[str, Any]) -> str:
    """'3D unet, 1 channel(s) in, 3 classes': what a person tells two models apart by."""
    return (
        f"{signature.get('dims', 2)}D {signature.get('name', 'model')}, {signature.get('in_channels', '?')} "
        f"channel(s) in, {signature.get('num_classes', '?')} classes"
    )


def epoch_of(path: Path) -> int | None:
    """The epoch a segtrack checkpoint holds, or None if it cannot be read."""
    payload = _payload_header(path)
    return payload.get("epoch") if payload is not None else None


def _payload_header(path: Path) -> dict[str, Any] | None:
    """A checkpoint's payload, memory-mapped (its weights are not read), or None: no such file, unreadable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return payload if isinstance(payload, dict) else None


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:]],
        "python": _tuples_to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), *rest))
    random.setstate(_lists_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples_to_lists(value):
    return [_tuples_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _lists_to_tuples(value):
    return tuple(_lists_to_tuples(v) for v in value) if isinstance(value, list) else value


# -- the checkpoints of a fit ------------------------------------------------------------------


class CheckpointSets:
    """The checkpoint files of one fit: each state as one or more of ``best``, ``last``, ``epoch``.

    ``write`` serialises the state on the caller's thread (an exact snapshot: training goes on only
    after it) into a temp file beside its first name; making it durable (fsync, rename over the
    name, folder fsync, hard links for the other names, old snapshots pruned) runs on a background
    thread while the next epoch trains, since fsync waits on the disk. A set lands before the next
    one starts. ``wait()`` returns once the last set is in place; a refused write (full disk,
    quota, folder removed) is one ``CheckpointError`` sentence, raised by ``write`` or ``wait``. A
    process killed meanwhile leaves the earlier files intact and a temp file that the next fit in
    the folder removes."""

    def __init__(self, folder: Path, keep: int = 0):
        self.folder, self.keep = folder, keep
        self._landing: threading.Thread | None = None
        self._landed: list[tuple[str, Path, int]] = []
        self._error: CheckpointError | None = None

    def write(
        self, payload: dict[str, Any], epoch: int, kinds: list[str], hold: Callable[[], Any]
    ) -> list[tuple[str, Path]]:
        """Start writing one state under each of ``kinds`` (inside ``hold()``: SIGTERM waits for the
        serialisation). Returns (kind, path) for each; the files are in place after ``wait()``."""
        self.wait()
        self._landed = []
        # file names count epochs from 1, as the console and the trackers do
        named = [
            (kind, self.folder / (f"epoch-{epoch + 1:04d}.pt" if kind == "epoch" else f"{kind}.pt")) for kind in kinds
        ]
        with hold():  # a SIGTERM waits until the landing thread has started (join() needs it started)
            try:
                tmp = _serialised(payload, named[0][1])
            except OSError as exc:
                raise self._refused(named[0][1], exc) from None
            landing = threading.Thread(target=self._land, args=(tmp, named), name="segtrack-checkpoint")
            landing.start()
            self._landing = landing
        return named

    def wait(self) -> list[tuple[str, Path, int]]:
        """Block until the last set is in place; (kind, path, bytes) of each of its files."""
        if self._landing is not None:  # set only once started (inside hold())
            self._landing.join()
        self._landing = None
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._landed

    def _land(self, tmp: Path, named: list[tuple[str, Path]]) -> None:
        landed: list[tuple[str, Path, int]] = []
        try:
            for kind, path in named:
                size = _made_durable(tmp, path) if not landed else link_atomic(landed[0][1], path)
                landed.append((kind, path, size))
            if self.keep:
                prune_snapshots(self.folder, self.keep)
        except Exception as exc:  # raised on the fit's thread by the next write or wait
            self._error = self._refused(path, exc)
        self._landed = landed

    def _refused(self, path: Path, exc: Exception) -> CheckpointError:
        reason = getattr(exc, "strerror", None) or exc
        return CheckpointError(
            f"cannot write {path.name} in {self.folder} ({reason}): the checkpoints written "
            f"before are intact; free space there or set checkpoint.dir, then resume with --resume auto"
        )


def prune_snapshots(folder: Path, keep: int) -> None:
    """Keep the newest ``keep`` per-epoch snapshots (``epoch-NNNN.pt``)."""
    for old in sorted(folder.glob("epoch-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)


def best_for_resume(source: Path, folder: Path, best_epoch: int) -> Path | None:
    """The best epoch's checkpoint for a fit resumed from ``source``: ``<folder>/best.pt`` when it
    holds that epoch; else the source itself or its sibling ``best.pt``, linked into ``folder`` so
    the fit's folder is complete; None when no file holds that epoch."""
    if best_epoch < 0:
        return None
    target = folder / "best.pt"
    for candidate in (target, source, source.with_name("best.pt")):
        if candidate.is_file() and epoch_of(candidate) == best_epoch:
            if candidate.resolve() != target.resolve():
                link_atomic(candidate, target)
            return target
    return None
