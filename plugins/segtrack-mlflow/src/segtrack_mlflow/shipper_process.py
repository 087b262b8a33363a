"""The shipper: a process of its own that sends one spool folder's spools for one tracking URI.

Training processes only append to spools; this process reads them and sends them to MLflow, so no
HTTP, JSON or SQL work of sending shares the training process's interpreter (and GIL). One runs per
spool folder and URI (a flock decides), serving every fit that logs there: a sweep's trials or eight
parallel fits share one connection pool and one start-up instead of paying them per fit.

It lives as long as it has a purpose: while a fit holds a spool open, and while something is left to
send (shipper_loop.py). Then it exits; a later fit, or `segtrack mlflow sync`, sends what it left. A
fit wakes it through a FIFO: the FIFO having no reader tells the fit that no shipper runs, so it
starts one. Started in its own session, it survives the training process being killed (and a Ctrl-C
in the terminal).

A quiet start (``--quiet-start``, for stores whose sending costs this machine's CPU) waits while
fits train on this module's few standard-library imports: the sender (MLflow's client for a
database store, or the REST client), the spools and logging are imported once it ends.

Run as ``python -m segtrack_mlflow.shipper_process --spool-dir DIR --uri MASKED_URI``; the URI with
its credentials comes in the environment (SEGTRACK_MLFLOW_URI), never on the command line.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from segtrack_mlflow.locks import flock_within
from segtrack_mlflow.shipper_files import SEND_NOW, ShipperFiles, WakePipe, fits_writing

URI_ENV = "SEGTRACK_MLFLOW_URI"
LOCK_WAIT_S = 10.0  # a new shipper waits this long for one that is finishing, then leaves it the work
SHIPPER_NICENESS = 19  # where SCHED_IDLE is refused: CFS weight 15 against a training process's 1024
REQUIRED = ("--spool-dir", "--uri")
NUMBERS = {"--flush-interval": 2.0, "--linger": 300.0, "--idle-exit": 600.0, "--quiet-start": 0.0}


def yield_to_training() -> None:
    """Run only on CPU the training leaves idle. torch's threads wait for each other at every
    operation: a process that takes a core from one of them for a time slice stalls all of them
    (a shipper at nice 10 made a small fit 4x slower). SCHED_IDLE gives this process a CFS weight of
    3 against 1024, so it runs in the gaps (data loading, validation, between fits)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or refused
        os.nice(SHIPPER_NICENESS)


def quiet_start(files: ShipperFiles, pipe: WakePipe, seconds: float, poll: float) -> None:
    """Hold the sends while a fit trains, for at most ``seconds``: a store whose sending costs this
    machine's CPU (a database store's first send imports MLflow and opens the store, ~2 s of CPU;
    a server on loopback handles every request beside the training), which a short fit on all cores
    pays in wall time. It ends when no fit holds a spool of the folder, or when someone waits for
    the send (SEND_NOW)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and fits_writing(files.root):
        if SEND_NOW in pipe.wait(min(poll, left)):
            return


def _take_lock(files: ShipperFiles) -> int | None:
    fd = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o644)
    if flock_within(fd, LOCK_WAIT_S):
        return fd
    os.close(fd)
    return None


def _options(argv: list[str]) -> tuple[dict[str, str], dict[str, float]]:
    """``--name value`` pairs: the required strings and the numbers (no argparse: it would double
    this process's start-up)."""
    usage = "usage: python -m segtrack_mlflow.shipper_process --spool-dir DIR --uri URI [--NAME SECONDS ...]"
    usage += f" (NAME: {', '.join(n[2:] for n in NUMBERS)})"
    given = dict(zip(argv[::2], argv[1::2], strict=False))
    wrong = [k for k in given if k not in (*REQUIRED, *NUMBERS)] + [k for k in REQUIRED if k not in given]
    if wrong or len(argv) % 2:
        raise SystemExit(f"{usage}; wrong or missing: {wrong or argv[-1:]}")
    try:
        numbers = {k[2:]: float(given.get(k, default)) for k, default in NUMBERS.items()}
    except ValueError as exc:
        raise SystemExit(f"{usage}: {exc}") from None
    return {k[2:]: given[k] for k in REQUIRED}, numbers


def main(argv: list[str] | None = None) -> int:
    paths, numbers = _options(sys.argv[1:] if argv is None else argv)
    yield_to_training()
    files = ShipperFiles(Path(paths["spool-dir"]).resolve(), paths["uri"])
    lock = _take_lock(files)
    if lock is None:
        return 0  # another shipper serves this folder and URI
    real_uri = os.environ.pop(URI_ENV, files.uri)
    pipe = WakePipe(files.wake)
    pipe.open()
    files.write_state(pid=os.getpid(), uri=files.uri, error=None)
    try:
        if numbers["quiet-start"] > 0:
            quiet_start(files, pipe, numbers["quiet-start"], numbers["flush-interval"])
        from segtrack_mlflow.shipper_loop import serve  # the sender and the spools: now there is work

        return serve(files, pipe, real_uri, numbers["flush-interval"], numbers["linger"], numbers["idle-exit"])
    finally:
        os.close(lock)


if __name__ == "__main__":
    sys.exit(main())
