"""Digests that read files, kept for the process while those files are unchanged, so a second
trainer (a study's next trial, a notebook's next fit) over the same files does not read them again.

A digest is keyed by the state of every file it read, not by names alone: device, inode, size,
modification and status-change times in ns (as git's index decides a file is unchanged). Writing
a file changes its times, replacing it changes its inode, and the status-change time cannot be set
back by hand (``touch -d`` sets it to now). Timestamps are coarse (a clock tick; 1-2 s on some
filesystems), so a digest is not kept when any file it read changed within the last 2 s (two
writes in one tick would look like one), nor when a file changed while it was being read."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import NamedTuple

RECENT_NS = 2_000_000_000
MAX_KEPT = 200_000  # digests kept (~250 bytes each with their keys), least recently used dropped first

_kept: OrderedDict[Hashable, bytes] = OrderedDict()


class FileState(NamedTuple):
    """What tells a file's content apart without reading it."""

    path: str
    device: int
    inode: int
    size: int
    modified_ns: int
    changed_ns: int


def file_state(path: str | os.PathLike) -> FileState | None:
    """The state of the file at ``path``; None where it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileState(os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def remembered(key: Callable[[], tuple[Hashable, int]], compute: Callable[[], bytes]) -> bytes:
    """``compute()``, or what it returned before for the same ``key()``.

    ``key`` returns ``(key, newest_ns)``: a key built from the ``file_state`` of every file
    ``compute`` reads (and whatever else its result depends on), and the newest modification or
    status-change time among them. ``key`` runs again after ``compute``: a file that changed in
    between, or too recently, leaves nothing kept."""
    before, newest = key()
    if before in _kept:
        _kept.move_to_end(before)
        return _kept[before]
    value = compute()
    if time.time_ns() - newest >= RECENT_NS and key()[0] == before:
        _kept[before] = value
        while len(_kept) > MAX_KEPT:
            _kept.popitem(last=False)
    return value


def forget() -> None:
    """Drop every digest kept (they are never wrong, only unneeded)."""
    _kept.clear()
