"""A run's write-ahead log on local disk: hooks append records, the shipper sends them.

Layout of one spool folder (named by its local id, which sorts by creation time):
    meta.json      run identity: tracking URI, experiment, run name, parent, MLflow run id once known
    records.jsonl  one JSON record per line, appended with a single write each
    cursor         byte offset in records.jsonl up to which records reached MLflow
    files/         hard links (or copies) of artifacts waiting for upload
    ship.lock      flock held by whoever is sending (a fit's shipper thread or `segtrack mlflow sync`)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "meta.json").read_text())


class SpoolBusy(Exception):
    """Another sender (thread or process) holds this spool's ship lock."""


@dataclass(frozen=True)
class Pending:
    end: int  # byte offset just after this record
    record: dict[str, Any]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Spool:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta: dict[str, Any] = read_meta(self.folder)
        self._lock = threading.Lock()
        self._repair_tail()
        self._fd = os.open(self.folder / "records.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._max_steps: dict[str, int] = {}
        for item in self._read_from(0):
            if item.record.get("t") == "metric":
                key, step = item.record["k"], item.record["s"]
                self._max_steps[key] = max(step, self._max_steps.get(key, step))

    # -- creation -------------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, meta: dict[str, Any]) -> Spool:
        local_id = time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:8]}"
        folder = Path(root) / local_id
        (folder / "files").mkdir(parents=True)
        _write_atomic(folder / "meta.json", json.dumps({**meta, "local_id": local_id, "run_id": None}))
        (folder / "records.jsonl").touch()
        return cls(folder)

    @classmethod
    def all_in(cls, root: Path) -> list[Spool]:
        root = Path(root)
        if not root.is_dir():
            return []
        return [cls(p) for p in sorted(root.iterdir()) if (p / "meta.json").is_file()]

    @property
    def local_id(self) -> str:
        return self.meta["local_id"]

    @property
    def run_id(self) -> str | None:
        return self.meta.get("run_id")

    def set_run_id(self, run_id: str) -> None:
        self.update_meta(run_id=run_id)

    def update_meta(self, **fields: Any) -> None:
        with self._lock:
            self.meta = {**self.meta, **fields}
            _write_atomic(self.folder / "meta.json", json.dumps(self.meta))

    # -- writing (training thread) --------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)  # one write per record: readers never see half a line
            if record.get("t") == "metric":
                key, step = record["k"], record["s"]
                self._max_steps[key] = max(step, self._max_steps.get(key, step))

    def metric(self, key: str, value: float, step: int, timestamp_ms: int | None = None) -> None:
        self.append({"t": "metric", "k": key, "v": float(value), "s": int(step),
                     "ts": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)})

    def max_step(self, key: str) -> int:
        """Highest step already spooled for ``key`` (-1 if none): a resumed fit skips those."""
        return self._max_steps.get(key, -1)

    def add_file(self, source: str | os.PathLike, artifact_path: str | None, slot: str | None = None) -> None:
        """Queue a file for upload. The spool keeps its own link to the current content, so a file
        replaced later (last.pt every epoch) uploads as it was; ``slot`` lets a newer file of the
        same slot supersede an older one that has not been uploaded yet."""
        source = Path(source)
        target_dir = self.folder / "files" / uuid.uuid4().hex[:12]
        target_dir.mkdir(parents=True)
        target = target_dir / source.name
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        self.append({"t": "file", "p": str(target.relative_to(self.folder)), "a": artifact_path, "slot": slot})

    def sync(self) -> None:
        """Make everything appended so far durable (fsync)."""
        with self._lock:
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1

    # -- reading (shipper) ----------------------------------------------------------------------

    @contextmanager
    def shipping(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the spool's ship lock, so one sender at a time reads and advances it; raises
        SpoolBusy after ``wait`` seconds. flock locks conflict between threads of one process too
        (each holds its own open file). Inside, meta.json is re-read: the previous holder may have
        created the run."""
        fd = os.open(self.folder / "ship.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise SpoolBusy(f"spool {self.local_id} is being sent by another process") from None
                    time.sleep(0.05)
            with self._lock:
                self.meta = read_meta(self.folder)
            yield
        finally:
            os.close(fd)  # releases the lock

    def cursor(self) -> int:
        path = self.folder / "cursor"
        return int(path.read_text()) if path.is_file() else 0

    def commit(self, offset: int) -> None:
        _write_atomic(self.folder / "cursor", str(offset))

    def pending(self, limit: int = 20_000) -> list[Pending]:
        return self._read_from(self.cursor(), limit)

    def has_pending(self) -> bool:
        return (self.folder / "records.jsonl").stat().st_size > self.cursor()

    def _read_from(self, offset: int, limit: int | None = None) -> list[Pending]:
        items = []
        with open(self.folder / "records.jsonl", "rb") as fh:
            fh.seek(offset)
            position = offset
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # a record still being written
                position += len(line)
                items.append(Pending(position, json.loads(line)))
                if limit is not None and len(items) >= limit:
                    break
        return items

    def _repair_tail(self) -> None:
        """Drop a half-written last line left by a crash, so new records start on a fresh line."""
        path = self.folder / "records.jsonl"
        if not path.is_file():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.pending():
            counts[item.record["t"]] = counts.get(item.record["t"], 0) + 1
        return counts
