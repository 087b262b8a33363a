"""SIGTERM inside a fit: raised like Ctrl-C, held back during checkpoint writes and while the fit
ends, and told apart from a launcher's stop after another rank died."""

from __future__ import annotations

import contextlib
import signal
import threading

from segtrack.errors import PeerLost
from segtrack.runtime.distributed import DistContext


def interrupt_behind(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``exc`` is, or that was unwinding when cleanup code raised
    ``exc`` instead: a user's stop stays a stop even when a library fails on the way out."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


class SigtermAsInterrupt:
    """SIGTERM ends the fit like Ctrl-C (status ``interrupted``, hooks fire, checkpoints intact).

    Under torchrun a SIGTERM also comes when another rank died; if a rank on this machine has
    ended when it arrives, the fit ends as ``failed`` (``PeerLost``), not as interrupted. A
    SIGTERM during a checkpoint write is raised once the write is done (raised inside torch.save,
    it broke the zip writer, whose error then replaced the interrupt). Once the fit is ending
    (``fit_exception``/``fit_end`` running, e.g. a tracking plugin flushing its run status), a
    SIGTERM is held back until they return, so the plugins can finish within the grace period
    launchers such as torchrun give before SIGKILL.
    """

    def __init__(self, dist_context: DistContext):
        self.dist = dist_context
        self.ending = False  # fit_exception/fit_end running: hold until the fit is left
        self.holding = False  # a checkpoint write: hold until the write is done
        self.pending: KeyboardInterrupt | None = None  # the held-back signal
        self._previous = None

    def _handler(self, signum, frame):
        interrupt = self._interrupt(
            signal.Signals(signum).name
        )  # peers checked now: in a user's kill they exit soon too
        if self.ending or self.holding:
            self.pending = self.pending or interrupt
            return
        raise interrupt

    def _interrupt(self, name: str) -> KeyboardInterrupt:
        lost = self.dist.lost_peers()
        if lost:
            return PeerLost(
                f"rank {', '.join(map(str, lost))} of this job died and the launcher stopped this "
                f"rank ({name}); see that rank's output for the cause"
            )
        return KeyboardInterrupt(f"signal {name}")

    @contextlib.contextmanager
    def held(self):
        """Keep a SIGTERM out of the block (a checkpoint write); it is raised when the block is done."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        interrupt, self.pending = self.pending, None
        if interrupt is not None:
            raise interrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        if self.pending is not None and exc_type is None:
            raise self.pending  # received while the fit was ending
        return False
