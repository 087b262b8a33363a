"""The training process's side of the shipper process: wake it (starting one when none runs),
wait until given spools are sent, and read what it reports. Nothing here sends anything."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from segtrack_mlflow.shipper_files import SEND_NOW, WAKE, ShipperFiles, notify
from segtrack_mlflow.shipper_process import URI_ENV
from segtrack_mlflow.spool import Spool
from segtrack_mlflow.uri import redact

log = logging.getLogger("segtrack.mlflow")
START_GRACE_S = 15.0  # a shipper we started is given this long to open its FIFO before another is started
POLL_S = 0.02
ERROR_GRACE_S = 10.0  # wait_sent(until_error=True) gives up after the shipper has failed this long


class ShipperLink:
    """:param root: the spool folder. :param uri: the tracking URI with its credentials (passed to
    the shipper in its environment). The other parameters are the shipper's (see shipper_process)."""

    def __init__(
        self, root: Path, uri: str, flush_interval: float = 2.0, linger: float = 300.0, quiet_start: float = 0.0
    ):
        self.files = ShipperFiles(Path(root).resolve(), redact(uri))
        self.uri, self.flush_interval, self.linger, self.quiet_start = uri, flush_interval, linger, quiet_start
        self._started: subprocess.Popen | None = None
        self._started_at = 0.0
        self._reported: str | None = None

    def wake(self, now: bool = False) -> None:
        """Tell the shipper there is something to send; ``now``: someone waits for it (it ends a
        shipper's quiet start). Starts a shipper when none listens."""
        if not notify(self.files.wake, SEND_NOW if now else WAKE):
            self._start()

    def _start(self) -> None:
        starting = self._started is not None and self._started.poll() is None
        if starting and time.monotonic() - self._started_at < START_GRACE_S:
            return  # ours is starting (or waiting for the lock of one that is finishing)
        env = {**os.environ, URI_ENV: self.uri}
        self.files.root.mkdir(parents=True, exist_ok=True)
        with open(self.files.log, "ab") as log_file:
            self._started = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "segtrack_mlflow.shipper_process",
                    "--spool-dir",
                    str(self.files.root),
                    "--uri",
                    self.files.uri,
                    "--flush-interval",
                    str(self.flush_interval),
                    "--linger",
                    str(self.linger),
                    "--quiet-start",
                    str(self.quiet_start),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.files.root,
                start_new_session=True,  # outlives this process; a Ctrl-C here does not reach it
            )
        self._started_at = time.monotonic()
        # reaps it when it exits while this process lives (no zombie; no warning for a live child)
        threading.Thread(target=self._started.wait, name="segtrack-shipper-reaper", daemon=True).start()

    def wait_sent(self, spools: Iterable[Spool], timeout: float, until_error: bool = False) -> bool:
        """Wait up to ``timeout`` seconds until every record of ``spools`` is sent; True when it is.
        ``until_error``: stop waiting once the shipper has reported that it cannot send for
        ERROR_GRACE_S (a first store creation racing a reader fails once, then succeeds)."""
        spools = list(spools)
        deadline = time.monotonic() + timeout
        next_wake, failing_since = 0.0, None
        while any(s.has_pending() for s in spools):
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= next_wake:  # also restarts a shipper that exited or was killed meanwhile
                self.wake(now=True)
                self.report()
                failing_since = (failing_since or now) if self._reported else None
                if until_error and failing_since is not None and now - failing_since >= ERROR_GRACE_S:
                    return False
                next_wake = now + 1.0
            time.sleep(POLL_S)
        return True

    def error(self) -> str | None:
        """The shipper's current trouble ("ConnectionError: ..."), None when it sends fine."""
        return self.files.live_error()

    def report(self) -> None:
        """Say on this process's console when the shipper starts or stops failing to send."""
        error = self.error()
        if error and error != self._reported:
            log.warning(
                "MLflow unreachable (%s): spooling locally in %s; the shipper retries (its log: %s)",
                error[:200],
                self.files.root,
                self.files.log,
            )
        self._reported = error
