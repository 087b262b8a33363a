"""Exclusive flock helpers shared by the spool, the shipper and its status: one sender per spool,
one shipper per folder and URI, and the probe that tells whether a live process holds a file."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


def flock_within(fd: int, seconds: float = 0.0, poll: float = 0.05) -> bool:
    """Take an exclusive flock on ``fd``, retrying every ``poll`` s for up to ``seconds``; whether
    it was taken (it is held until ``fd`` is closed)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)


def held_elsewhere(path: Path) -> bool:
    """Whether another open file holds a flock on ``path`` (a live fit writing a spool, a running
    shipper); False when the file does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not flock_within(fd)
    finally:
        os.close(fd)  # releases the probe's own lock
