"""Where the shipper process of one spool folder and tracking URI keeps its lock, wake-up pipe,
state and log: beside the spools, named by a digest of the URI (masked password), so fits that
log to different stores from one spool folder each get their own sender and credentials.

Standard library only, and light: the shipper's quiet start runs on this module alone."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import stat
from pathlib import Path

from segtrack_mlflow.locks import held_elsewhere


class ShipperFiles:
    def __init__(self, root: Path, uri: str):
        self.root = root  # the spool folder
        self.uri = uri  # the tracking URI as spools keep it (password masked)

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

    def read_state(self) -> dict:
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

    def write_state(self, **state: object) -> None:
        tmp = self.state.with_name(f".{self.state.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state)


SEND_NOW = b"n"  # a wake-up byte that also ends a quiet start (someone waits for the send)
WAKE = b"w"


class WakePipe:
    """The shipper's end of its FIFO: fits write a byte to wake it (``notify``)."""

    def __init__(self, path: Path):
        self.path = path
        self._fds: list[int] = []

    def open(self) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkfifo(self.path, 0o600)
        if not stat.S_ISFIFO(os.stat(self.path).st_mode):
            raise SystemExit(f"{self.path} is not a FIFO: remove it")
        reader = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        keeper = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # our own writer: no end-of-file when fits close
        self._fds = [reader, keeper]

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def wait(self, timeout: float) -> bytes:
        """Until a fit writes or ``timeout`` passes; the wake-up bytes drained (b"" on time-out)."""
        readable, _, _ = select.select(self._fds[:1], [], [], max(0.0, timeout))
        data = b""
        if readable:
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(self._fds[0], 4096):
                    data += chunk
        return data


def spool_folders(root: Path) -> list[Path]:
    """Every spool folder under ``root``, oldest first (``Spool.folders_in``; here for the quiet start)."""
    root = Path(root)
    return sorted(p for p in root.iterdir() if (p / "meta.json").is_file()) if root.is_dir() else []


def fits_writing(root: Path) -> bool:
    """Whether a live fit holds a spool of folder ``root`` open (any tracking URI; ``Spool.has_writer``)."""
    return any(held_elsewhere(folder / "records.jsonl") for folder in spool_folders(root))


def notify(fifo: Path, byte: bytes) -> bool:
    """Write ``byte`` to a shipper's wake-up FIFO; False when no shipper reads it (none runs)."""
    import errno

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
