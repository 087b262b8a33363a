"""SIGTERM handling inside a fit: held back during checkpoint writes, and a stop stays a stop
when cleanup code fails while it unwinds."""

from __future__ import annotations

import os
import signal
import time

import pytest

from segtrack.runtime.distributed import DistContext
from segtrack.runtime.signals import SigtermAsInterrupt as _SigtermAsInterrupt
from segtrack.runtime.signals import interrupt_behind as _interrupt_behind


def test_sigterm_during_a_held_block_is_raised_after_it():
    finished = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), _SigtermAsInterrupt(DistContext()) as guard:
        with guard.held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here; nothing may be raised inside the block
            finished.append("write completed")
        finished.append("not reached")
    assert finished == ["write completed"]


def test_sigterm_outside_a_held_block_is_raised_at_once_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), _SigtermAsInterrupt(DistContext()):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    assert time.monotonic() - started < 20
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_error_raised_while_an_interrupt_unwinds_is_still_an_interrupt():
    def cleanup_fails():
        try:
            raise KeyboardInterrupt("signal SIGTERM")
        except KeyboardInterrupt:
            raise RuntimeError("unexpected pos 64 vs 0")  # noqa: B904 (what torch's zip writer raised)

    with pytest.raises(RuntimeError) as caught:
        cleanup_fails()
    assert str(_interrupt_behind(caught.value)) == "signal SIGTERM"
    assert _interrupt_behind(RuntimeError("a real failure")) is None
