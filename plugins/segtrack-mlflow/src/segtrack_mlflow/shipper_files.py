"""Where the shipper process of one spool folder and tracking URI keeps its lock, wake-up pipe,
state and log: beside the spools, named by a digest of the URI (masked password), so fits that
log to different stores from one spool folder each get their own sender and credentials."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtrack_mlflow.locks import held_elsewhere


@dataclass(frozen=True)
class ShipperFiles:
    root: Path  # the spool folder
    uri: str  # the tracking URI as spools keep it (password masked)

    @property
    def key(self) -> str:
        return hashlib.sha256(self.uri.encode()).hexdigest()[:10]

    def _path(self, suffix: str) -> Path:
        return self.root / f"shipper-{self.key}.{suffix}"

    @property
    def lock(self) -> Path:  # flock held by the one running shipper
        return self._path("lock")

    @property
    def wake(self) -> Path:  # a FIFO: a byte written there wakes the shipper; no reader = none runs
        return self._path("wake")

    @property
    def state(self) -> Path:  # {"pid", "error"}: what the fit reports on its console
        return self._path("json")

    @property
    def log(self) -> Path:
        return self._path("log")

    def read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state.read_text())
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def live_error(self) -> str | None:
        """The running shipper's current trouble; None when it sends fine, or when the state file is
        a dead shipper's (its last error is stale: a new one starts clean)."""
        state = self.read_state()
        error, pid = state.get("error"), state.get("pid")
        if not error or not isinstance(pid, int) or not held_elsewhere(self.lock):
            return None
        try:
            os.kill(pid, 0)  # the shipper that wrote it still runs (a successor rewrites the state first)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return str(error)

    def write_state(self, **state: Any) -> None:
        tmp = self.state.with_name(f".{self.state.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state)


SEND_NOW = b"n"  # a wake-up byte that also ends a quiet start (someone waits for the send)
WAKE = b"w"


def notify(fifo: Path, byte: bytes) -> bool:
    """Write ``byte`` to a shipper's wake-up FIFO; False when no shipper reads it (none runs)."""
    import errno
    import os

    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):  # ENXIO: a FIFO without reader
            return False
        raise
    try:
        os.write(fd, byte)
    except BlockingIOError:
        pass  # full of wake-ups already
    finally:
        os.close(fd)
    return True


def wake_all(root: Path, byte: bytes = SEND_NOW) -> None:
    """Write ``byte`` to every running shipper's FIFO in spool folder ``root`` (none: nothing)."""
    for fifo in Path(root).glob("shipper-*.wake"):
        notify(fifo, byte)


def shipper_lines(root: Path) -> list[str]:
    """One line per shipper of this spool folder: running or not, its URI, its current trouble."""

    lines = []
    for state_path in sorted(Path(root).glob("shipper-*.json")):
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            continue
        running = held_elsewhere(state_path.with_suffix(".lock"))
        what = f"running (pid {state.get('pid')})" if running else "not running"
        trouble = f"; retrying: {state['error']}" if running and state.get("error") else ""
        lines.append(f"shipper for {state.get('uri', '?')}: {what}{trouble}; log {state_path.with_suffix('.log')}")
    return lines
