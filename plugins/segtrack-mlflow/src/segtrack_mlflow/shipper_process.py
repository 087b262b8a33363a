"""The shipper: a process of its own that sends one spool folder's spools for one tracking URI.

Training processes only append to spools; this process reads them and sends them to MLflow, so no
HTTP, JSON or SQL work of sending shares the training process's interpreter (and GIL). One runs per
spool folder and URI (a flock decides), serving every fit that logs there: a sweep's trials or eight
parallel fits share one connection pool and one start-up instead of paying them per fit.

It lives as long as it has a purpose: while a fit holds a spool open, and while something is left to
send (retrying an unreachable server with backoff for ``--linger`` seconds after the last fit ended).
Then it exits; a later fit, or `segtrack mlflow sync`, sends what it left. A fit wakes it through a
FIFO: the FIFO having no reader tells the fit that no shipper runs, so it starts one. Started in its
own session, it survives the training process being killed (and a Ctrl-C in the terminal).

Run as ``python -m segtrack_mlflow.shipper_process --spool-dir DIR --uri MASKED_URI``; the URI with
its credentials comes in the environment (SEGTRACK_MLFLOW_URI), never on the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import stat
import sys
import time
from pathlib import Path

from segtrack_mlflow.locks import flock_within
from segtrack_mlflow.shipper_files import SEND_NOW, ShipperFiles
from segtrack_mlflow.spool import Spool, SpoolBusy, SpoolCorrupt
from segtrack_mlflow.uri import is_remote, redact

log = logging.getLogger("segtrack.mlflow.shipper")
URI_ENV = "SEGTRACK_MLFLOW_URI"
LOCK_WAIT_S = 10.0  # a new shipper waits this long for one that is finishing, then leaves it the work
MAX_BACKOFF_S = 5.0
SHIPPER_NICENESS = 19  # where SCHED_IDLE is refused: CFS weight 15 against a training process's 1024


class ShipperProcess:
    def __init__(self, files: ShipperFiles, real_uri: str, flush_interval: float, linger: float, idle_exit: float):
        from segtrack_mlflow import store

        self.files, self.flush_interval, self.linger, self.idle_exit = files, flush_interval, linger, idle_exit
        self.clients = store.Clients(real_uri)
        self.spools: dict[str, Spool] = {}  # ours (our URI), by local id
        self.settled: dict[str, int] = {}  # spools sent in full with no writer, at this records size
        self.unreadable: set[Path] = set()
        self.error: str | None = None
        self.rejected = 0
        self.last_progress = self.last_activity = time.monotonic()
        self._fifo: list[int] = []

    # -- the wake-up pipe -------------------------------------------------------------------------

    def open_fifo(self) -> None:
        path = self.files.wake
        with contextlib.suppress(FileExistsError):
            os.mkfifo(path, 0o600)
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            raise SystemExit(f"{path} is not a FIFO: remove it")
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        keeper = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # our own writer: no end-of-file when fits close
        self._fifo = [reader, keeper]

    def close_fifo(self) -> None:
        for fd in self._fifo:
            os.close(fd)
        self._fifo = []

    def wait(self, timeout: float) -> bool:
        """Until a fit writes to the FIFO or ``timeout`` passes; drains the wake-up bytes. True
        when one of them asks for the send now (someone waits for it)."""
        readable, _, _ = select.select(self._fifo[:1], [], [], max(0.0, timeout))
        asked = False
        if readable:
            with contextlib.suppress(BlockingIOError):
                while data := os.read(self._fifo[0], 4096):
                    asked |= SEND_NOW in data
            self.last_activity = time.monotonic()
        return asked

    def quiet_start(self, seconds: float) -> None:
        """Hold the sends while a fit trains, for at most ``seconds``: a store whose sending costs
        this machine's CPU (a database store's first send imports MLflow and opens the store, ~2 s
        of CPU; a server on loopback handles every request beside the training), which a short fit
        on all cores pays in wall time. A server's runs are created meanwhile (two requests each),
        so a fit can print its run's page. It ends when no fit holds a spool, or when someone
        waits for the send."""
        deadline = time.monotonic() + seconds
        create_runs = is_remote(self.files.uri)
        while (left := deadline - time.monotonic()) > 0:
            spools = self.scan()
            if not any(spool.has_writer() for spool in spools):
                return
            if create_runs:
                self._create_runs(spools)
            if self.wait(min(self.flush_interval, left)):
                return

    def _create_runs(self, spools: list[Spool]) -> None:
        from segtrack_mlflow.shipper import ship

        for spool in spools:
            if spool.run_id is None:
                try:
                    ship(spool, self.clients, self.spools, create_only=True)
                except Exception as exc:  # unreachable, a parent not created yet: the main loop handles it
                    log.info("run of %s not created yet: %s", spool.local_id, type(exc).__name__)

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
        from segtrack_mlflow.shipper import WaitingForParent, ship

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
        from segtrack_mlflow.shipper import close_orphan

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

    def run(self, quiet_start: float = 0.0) -> int:
        if quiet_start > 0:
            self.quiet_start(quiet_start)
        backoff = self.flush_interval
        while True:
            try:
                left, live = self.round()
                self._set_error(None)
                backoff = self.flush_interval
            except Exception as exc:  # down or refusing: keep everything, retry later
                from segtrack_mlflow.shipper import WaitingForParent

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
        self.close_fifo()
        try:
            left, live = self.round()
        except Exception:
            left, live = True, True
        if left or live:
            self.open_fifo()
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


def yield_to_training() -> None:
    """Run only on CPU the training leaves idle. torch's threads wait for each other at every
    operation: a process that takes a core from one of them for a time slice stalls all of them
    (a shipper at nice 10 made a small fit 4x slower). SCHED_IDLE gives this process a CFS weight of
    3 against 1024, so it runs in the gaps (data loading, validation, between fits)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or refused
        os.nice(SHIPPER_NICENESS)


def _take_lock(files: ShipperFiles) -> int | None:
    fd = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o644)
    if flock_within(fd, LOCK_WAIT_S):
        return fd
    os.close(fd)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segtrack_mlflow.shipper_process")
    parser.add_argument("--spool-dir", required=True, type=Path)
    parser.add_argument("--uri", required=True, help="the tracking URI as spools keep it (password masked)")
    parser.add_argument("--flush-interval", type=float, default=2.0)
    parser.add_argument("--linger", type=float, default=300.0)
    parser.add_argument("--idle-exit", type=float, default=600.0)
    parser.add_argument("--quiet-start", type=float, default=0.0, help="seconds to hold the sends while fits train")
    args = parser.parse_args(argv)
    yield_to_training()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s shipper[%(process)d] %(levelname)s %(message)s")
    files = ShipperFiles(args.spool_dir.resolve(), args.uri)
    lock = _take_lock(files)
    if lock is None:
        return 0  # another shipper serves this folder and URI
    real_uri = os.environ.pop(URI_ENV, args.uri)
    # MLflow resolves some URIs (a model version's models:/ source) against the process's tracking
    # URI: ours, not a default mlflow.db in the working folder
    from segtrack_mlflow.uri import connect_uri

    os.environ["MLFLOW_TRACKING_URI"] = connect_uri(real_uri)
    shipper = ShipperProcess(files, real_uri, args.flush_interval, args.linger, args.idle_exit)
    shipper.open_fifo()
    files.write_state(pid=os.getpid(), uri=files.uri, error=None)
    log.info("shipping %s to %s", files.root, files.uri)
    try:
        return shipper.run(args.quiet_start)
    finally:
        log.info("exiting")
        os.close(lock)


if __name__ == "__main__":
    sys.exit(main())
