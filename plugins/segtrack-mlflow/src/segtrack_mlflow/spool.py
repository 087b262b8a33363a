"""A run's write-ahead log on local disk: hooks append records, the shipper sends them.

Layout of one spool folder (named by its local id, which sorts by creation time):
    meta.json      run identity: tracking URI, experiment, run name, parent, MLflow run id once known
    records.jsonl  one JSON line per entry (typed in entries.py), appended with a single write each
    cursor         byte offset in records.jsonl up to which records reached MLflow
    system.jsonl   system metric points, appended by the fit's sampler process (system_metrics.py)
    system.cursor  byte offset in system.jsonl up to which points reached MLflow
    files/         hard links (or copies) of artifacts waiting for upload
    quarantined.jsonl  lines `segtrack mlflow sync` moved out of records.jsonl: not records, never sent
    ship.lock      flock held by whoever is sending (the shipper process or `segtrack mlflow sync`)
The fit writing records.jsonl holds a shared flock on it, so `segtrack mlflow sync` never cuts a
record short that a live fit is still writing. meta.json keeps the tracking URI with its password
masked: the sender takes credentials from the environment or settings (see store.connect_uri).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtrack import SegtrackError
from segtrack_mlflow.entries import ArtifactFile, Entry, MetricPoint, Status, Tags, decode, encode
from segtrack_mlflow.locks import flock_within, held_elsewhere
from segtrack_mlflow.shipper_files import spool_folders

QUARANTINE = "quarantined.jsonl"
FIX = (
    f"run `segtrack mlflow sync` once no fit writes this spool: it moves such lines to {QUARANTINE} and sends the rest"
)
TERMINAL = ("FINISHED", "FAILED", "KILLED")
RECORDS, SYSTEM = "records.jsonl", "system.jsonl"
CURSORS = {RECORDS: "cursor", SYSTEM: "system.cursor"}  # each stream's file: where its sent part ends


class SpoolBusy(Exception):
    """Another sender (thread or process) holds this spool's ship lock."""


class SpoolCorrupt(SegtrackError):
    """A spool file cannot be read: the message names the spool, the file, the line and the fix."""

    exit_code = 2


def read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text())
        if isinstance(meta, dict) and {"local_id", "tracking_uri", "run_name"} <= meta.keys():
            return meta
        why = "local_id, tracking_uri or run_name missing"
    except ValueError as exc:
        why = str(exc)
    raise SpoolCorrupt(
        f"spool {folder}: meta.json is corrupt ({why}): restore it, or move the folder out of the "
        f"spool folder if its run is not needed"
    )


def _parse(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """(the record of one complete line, "") or (None, why it is not one)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at column {exc.colno}"
    except ValueError:
        return None, "not UTF-8 text"
    if not isinstance(record, dict) or not isinstance(record.get("t"), str):
        return None, "not a record object"
    try:
        decode(record)
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"a {record['t']!r} record that cannot be read ({type(exc).__name__}: {exc})"
    return record, ""


@dataclass(frozen=True)
class Pending:
    end: int  # byte offset just after this record
    record: dict[str, Any]  # the line as spooled

    @functools.cached_property
    def entry(self) -> Entry:  # decoded once, however often the shipper looks at it
        return decode(self.record)


def _line(record: dict[str, Any]) -> bytes:
    """One record as the line records.jsonl holds (written with a single write)."""
    return (json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n").encode()


def _write_atomic(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(text.encode() if isinstance(text, str) else text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Spool:
    """A spool opened by its writer (a fit: ``writer=True``), or only to be read and shipped
    (`segtrack mlflow status` and `sync`), which changes nothing on disk by opening it."""

    def __init__(self, folder: Path, writer: bool = True):
        self.folder = Path(folder)
        self.meta: dict[str, Any] = read_meta(self.folder)
        self._lock = threading.Lock()
        self._fd = -1
        self._max_steps: dict[str, int] = {}
        if not writer:
            return
        for item in self._read_all(0):
            if item.record["t"] == "metric":
                key, step = item.record["k"], item.record["s"]
                self._max_steps[key] = max(step, self._max_steps.get(key, step))
        self._open_writer()

    def _open_writer(self) -> None:
        self._fd = os.open(self.folder / "records.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._repair_tail(self._fd, wait=1.0)  # the shipper's liveness probe holds the lock for microseconds
        fcntl.flock(self._fd, fcntl.LOCK_SH)  # held while open: a live writer's tail is never cut

    # -- creation -------------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, meta: dict[str, Any]) -> Spool:
        local_id = time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:8]}"
        folder = Path(root) / local_id
        (folder / "files").mkdir(parents=True)
        _write_atomic(folder / "meta.json", json.dumps({**meta, "local_id": local_id, "run_id": None}))
        (folder / "records.jsonl").touch()
        return cls(folder)

    @staticmethod
    def folders_in(root: Path) -> list[Path]:
        """Every spool folder under ``root``, oldest first."""
        return spool_folders(root)

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
        line = _line(record)
        with self._lock:
            if self._fd < 0:  # closed at a fit's end, written again (a trial's state after its fit)
                self._open_writer()
            os.write(self._fd, line)  # one write per record: readers never see half a line
            if record.get("t") == "metric":
                key, step = record["k"], record["s"]
                self._max_steps[key] = max(step, self._max_steps.get(key, step))

    def add(self, entry: Entry) -> None:
        """Append one typed entry."""
        self.append(encode(entry))

    def metric(
        self,
        key: str,
        value: float,
        step: int,
        timestamp_ms: int | None = None,
        model: str | None = None,
        dataset: tuple[str, str] | None = None,
    ) -> None:
        """A metric point; ``model`` names a LoggedModel of this spool the point also belongs to,
        ``dataset`` the (name, digest) of the run's dataset input it was measured on."""
        now = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        self.add(MetricPoint(key, float(value), int(step), now, model, dataset))

    def staging_folder(self) -> Path:
        """A new empty folder under files/ for a whole folder to upload (removed once sent)."""
        folder = self.folder / "files" / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        return folder

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
        self.add(ArtifactFile(str(target.relative_to(self.folder)), artifact_path, slot))

    def sync(self) -> None:
        """Make everything appended so far durable (fsync)."""
        with self._lock:
            if self._fd >= 0:  # closed: close() made it durable
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
            if not flock_within(fd, wait):
                raise SpoolBusy(f"spool {self.local_id} is being sent by another process")
            with self._lock:
                self.meta = read_meta(self.folder)
            yield
        finally:
            os.close(fd)  # releases the lock

    def cursor(self, stream: str = RECORDS) -> int:
        path = self.folder / CURSORS[stream]
        try:
            return int(path.read_text()) if path.is_file() else 0
        except ValueError:
            raise SpoolCorrupt(
                f"spool {self.folder}: {path.name} is not a byte offset: delete that file to send "
                f"{stream} from its start (MLflow ignores points sent twice)"
            ) from None

    def commit(self, offset: int, stream: str = RECORDS) -> None:
        _write_atomic(self.folder / CURSORS[stream], str(offset))

    def pending(self, limit: int = 20_000, stream: str = RECORDS) -> list[Pending]:
        return self._read_from(self.cursor(stream), limit, stream)

    def has_pending(self) -> bool:
        """Whether anything of this spool (records, system metric points) is still to be sent."""
        for stream in CURSORS:
            path = self.folder / stream
            if path.is_file() and path.stat().st_size > self.cursor(stream):
                return True
        return False

    def _read_from(self, offset: int, limit: int | None = None, stream: str = RECORDS) -> list[Pending]:
        """Complete records from ``offset`` on, up to a corrupt line (SpoolCorrupt if it comes first)."""
        items: list[Pending] = []
        if not (self.folder / stream).is_file():
            return items
        with open(self.folder / stream, "rb") as fh:
            fh.seek(offset)
            position = offset
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # a record still being written, or torn by a crash (torn_line() tells)
                record, why = _parse(line)
                if record is None:
                    if items:
                        break
                    raise SpoolCorrupt(
                        f"spool {self.folder}: line {self._line_at(position, stream)} of {stream} is "
                        f"corrupt ({why}): {FIX}"
                    )
                position += len(line)
                items.append(Pending(position, record))
                if limit is not None and len(items) >= limit:
                    break
        return items

    def _line_at(self, offset: int, stream: str = RECORDS) -> int:
        with open(self.folder / stream, "rb") as fh:
            return fh.read(offset).count(b"\n") + 1

    def has_writer(self) -> bool:
        """Whether a live process holds this spool open for writing (a fit that may append more)."""
        return held_elsewhere(self.folder / "records.jsonl")

    def last_status(self) -> str | None:
        """The last run status spooled (RUNNING after a resume, FINISHED, ...); None if none was."""
        status = None
        for item in self._read_all(0):
            if item.record["t"] == "status":
                status = item.record.get("status")
        return status

    def append_unowned(self, entries: list[Entry]) -> bool:
        """Append ``entries`` to a spool no fit holds (a sender closing a run left behind); False,
        appending nothing, when a fit opened it meanwhile."""
        fd = os.open(self.folder / "records.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            os.write(fd, b"".join(_line(encode(entry)) for entry in entries))
            os.fsync(fd)
            return True
        finally:
            os.close(fd)

    def torn_line(self) -> int | None:
        """The number of an unfinished last line (a crash cut it short, or a fit is writing it)."""
        path = self.folder / "records.jsonl"
        size = path.stat().st_size if path.is_file() else 0
        if size == 0:
            return None
        with open(path, "rb") as fh:
            fh.seek(size - 1)
            return None if fh.read(1) == b"\n" else self._line_at(size)

    def repair_tail(self) -> int | None:
        """Drop a torn last line left by a crash, unless a fit holds the spool open (it is still
        writing that line); returns the number of the line dropped. Only senders call this."""
        if self.torn_line() is None:
            return None
        fd = os.open(self.folder / "records.jsonl", os.O_RDWR)
        try:
            return self._repair_tail(fd)
        finally:
            os.close(fd)

    def _repair_tail(self, fd: int, wait: float = 0.0) -> int | None:
        if not flock_within(fd, wait, poll=0.01):
            return None  # a live writer holds it
        torn = self.torn_line()
        if torn is not None:
            with open(self.folder / "records.jsonl", "rb") as fh:
                os.ftruncate(fd, fh.read().rfind(b"\n") + 1)
        return torn

    def quarantine(self) -> tuple[list[int], bool]:
        """Move every complete line of records.jsonl that is not a record to quarantined.jsonl,
        keeping the cursor on the same record; returns (their line numbers, whether the run was
        given a final status). Nothing moves while a fit holds the spool open. Senders only.

        The valid records are all sent rather than none: a run's points must not wait on a line
        that can never be sent. A run whose final status was lost (or never written: the fit
        crashed) is ended FAILED, tagged with what was left out, so no RUNNING run stays behind."""
        path = self.folder / "records.jsonl"
        if not path.is_file():
            return [], False
        fd = os.open(path, os.O_RDWR)
        try:
            if not flock_within(fd):
                return [], False  # a live fit writes it: it stays as it is
            with open(path, "rb") as fh:
                lines = fh.read().splitlines(keepends=True)
            cursor = self.cursor()
            kept, bad, position, new_cursor = [], [], 0, cursor
            ended = False
            for number, line in enumerate(lines, 1):
                record, _ = _parse(line) if line.endswith(b"\n") else (None, "")  # torn: cannot be completed
                if record is None:
                    bad.append((number, line))
                    new_cursor -= len(line) if position < cursor else 0
                else:
                    kept.append(line)
                    ended = ended or (record["t"] == "status" and record.get("status") in TERMINAL)
                position += len(line)
            if not bad:
                return [], False
            numbers = [number for number, _ in bad]
            with open(self.folder / QUARANTINE, "ab") as fh:
                fh.write(b"".join(line if line.endswith(b"\n") else line + b"\n" for _, line in bad))
                fh.flush()
                os.fsync(fh.fileno())
            note = Tags({"segtrack.spool_quarantined": f"lines {', '.join(map(str, numbers))} in {QUARANTINE}"})
            kept.append(_line(encode(note)))
            if not ended:
                kept.append(_line(encode(Status("FAILED", int(time.time() * 1000)))))
            _write_atomic(path, b"".join(kept))
            self.commit(new_cursor)
            return numbers, not ended
        finally:
            os.close(fd)

    def _read_all(self, offset: int, stream: str = RECORDS) -> Iterator[Pending]:
        while items := self._read_from(offset, 20_000, stream):
            yield from items
            offset = items[-1].end

    def summary(self) -> dict[str, int]:
        """Unsent records by type (SpoolCorrupt names the first corrupt line); system metric points
        count as "system metric"."""
        counts: dict[str, int] = {}
        for item in self._read_all(self.cursor()):
            counts[item.record["t"]] = counts.get(item.record["t"], 0) + 1
        system = sum(1 for _ in self._read_all(self.cursor(SYSTEM), SYSTEM))
        if system:
            counts["system metric"] = system
        return counts
