"""The shipper's sending loop: rounds over the spools of one folder and tracking URI, oldest
first, until nothing is left to send and no fit writes; retries an unreachable store with backoff
for ``linger`` seconds, then leaves the rest spooled (the next fit or `segtrack mlflow sync` sends
it). Imported by the shipper process once there is something to send (shipper_process.py)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from segtrack_mlflow import store
from segtrack_mlflow.shipper import WaitingForParent, close_orphan, ship
from segtrack_mlflow.shipper_files import ShipperFiles, WakePipe
from segtrack_mlflow.spool import Spool, SpoolBusy, SpoolCorrupt
from segtrack_mlflow.uri import connect_uri, redact

log = logging.getLogger("segtrack.mlflow.shipper")
MAX_BACKOFF_S = 5.0


def serve(
    files: ShipperFiles, pipe: WakePipe, real_uri: str, flush_interval: float, linger: float, idle_exit: float
) -> int:
    """Send until done (the caller holds the shipper's lock and has opened ``pipe``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s shipper[%(process)d] %(levelname)s %(message)s")
    # MLflow resolves some URIs (a model version's models:/ source) against the process's tracking
    # URI: ours, not a default mlflow.db in the working folder
    os.environ["MLFLOW_TRACKING_URI"] = connect_uri(real_uri)
    log.info("shipping %s to %s", files.root, files.uri)
    try:
        return ShipperLoop(files, pipe, real_uri, flush_interval, linger, idle_exit).run()
    finally:
        log.info("exiting")


class ShipperLoop:
    """Rounds over the folder's spools of our URI until nothing is left to send and no fit writes."""

    def __init__(
        self, files: ShipperFiles, pipe: WakePipe, real_uri: str, flush_interval: float, linger: float, idle_exit: float
    ):
        self.files, self.pipe = files, pipe
        self.flush_interval, self.linger, self.idle_exit = flush_interval, linger, idle_exit
        self.clients = store.Clients(real_uri)
        self.spools: dict[str, Spool] = {}  # ours (our URI), by local id
        self.settled: dict[str, int] = {}  # spools sent in full with no writer, at this records size
        self.unreadable: set[Path] = set()
        self.error: str | None = None
        self.rejected = 0
        self.last_progress = self.last_activity = time.monotonic()

    def wait(self, timeout: float) -> None:
        if self.pipe.wait(timeout):
            self.last_activity = time.monotonic()

    # -- one round: every spool of ours, oldest first ---------------------------------------------

    def scan(self) -> list[Spool]:
        for folder in Spool.folders_in(self.files.root):
            if folder.name in self.spools or folder in self.unreadable:
                continue
            try:
                spool = Spool(folder, writer=False)
            except SpoolCorrupt as exc:
                log.error("%s", exc)
                self.unreadable.add(folder)
                continue
            if spool.meta["tracking_uri"] == self.files.uri:
                self.spools[spool.local_id] = spool
        return [self.spools[k] for k in sorted(self.spools)]

    def round(self) -> tuple[bool, bool]:
        """Send what is pending; returns (anything left to send, any spool still held by a fit)."""
        left = live = False
        waiting: list[Spool] = []
        for spool in self.scan():
            size = _size(spool.folder / "records.jsonl")
            if self.settled.get(spool.local_id) == size:
                continue
            writer = spool.has_writer()
            live |= writer
            if not self._send(spool, writer, waiting):
                continue
            if not writer and self._close_orphan(spool):
                left = True  # its closing records go out in the next round
            elif spool.has_pending():
                left = True
            elif not writer:
                self.settled[spool.local_id] = size
        for spool in waiting:  # a fold's spool created in the same second as its parent's sorts first
            self._send(spool, spool.has_writer(), [])
            left |= spool.has_pending()
        return left, live

    def _send(self, spool: Spool, writer: bool, waiting: list[Spool]) -> bool:
        """Send one spool; False when it cannot be read (it is left out from now on)."""
        try:
            if not writer:
                spool.repair_tail()  # a fit killed mid-write left half a line: it can never be sent
            if spool.has_pending() and ship(spool, self.clients, self.spools):
                self.last_progress = self.last_activity = time.monotonic()
        except SpoolBusy:
            pass  # `segtrack mlflow sync` holds it
        except WaitingForParent:
            waiting.append(spool)
        except SpoolCorrupt as exc:
            log.error("%s", exc)
            self.unreadable.add(spool.folder)
            self.spools.pop(spool.local_id, None)
            return False
        return True

    def _close_orphan(self, spool: Spool) -> bool:
        try:
            closed = close_orphan(spool)
        except SpoolBusy:
            return False  # `segtrack mlflow sync` holds it: it closes it itself
        if closed:
            log.warning(
                "run %s (%s) was left RUNNING by a process that is gone: ending it KILLED",
                spool.run_id,
                spool.meta["run_name"],
            )
        return closed

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        backoff = self.flush_interval
        while True:
            try:
                left, live = self.round()
                self._set_error(None)
                backoff = self.flush_interval
            except Exception as exc:  # down or refusing: keep everything, retry later
                if not isinstance(exc, WaitingForParent):
                    self._set_error(f"{type(exc).__name__}: {redact(str(exc).splitlines()[0] if str(exc) else '')}")
                left, live = True, any(s.has_writer() for s in self.spools.values())
                backoff = min(MAX_BACKOFF_S, backoff * 2)
            now = time.monotonic()
            if not left and not live and self.finished():
                return 0
            if left and not live and now - self.last_progress > self.linger:
                log.warning(
                    "giving up for now after %.0f s without progress (%s): what is left stays spooled in %s; "
                    "the next fit or `segtrack mlflow sync` sends it",
                    self.linger,
                    self.error,
                    self.files.root,
                )
                return 0
            if live and now - self.last_activity > self.idle_exit:
                log.info("idle for %.0f s: exiting (a fit starts a shipper again when it writes)", self.idle_exit)
                return 0
            self.wait(backoff if self.error else self.flush_interval)

    def finished(self) -> bool:
        """Whether to exit: after closing the FIFO (a fit writing now starts a new shipper, which
        waits for our lock), one more look catches records appended just before."""
        self.pipe.close()
        try:
            left, live = self.round()
        except Exception:
            left, live = True, True
        if left or live:
            self.pipe.open()
            return False
        return True

    def _set_error(self, error: str | None) -> None:
        if error == self.error:
            return
        if error:
            log.warning("MLflow unreachable or refusing (%s); retrying", error)
        elif self.error:
            log.info("MLflow reachable again")
        self.error = error
        self.files.write_state(pid=os.getpid(), uri=self.files.uri, error=error)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
