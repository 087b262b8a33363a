"""Free TCP ports on 127.0.0.1 (for servers, torchrun rendezvous, and addresses nobody listens on)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port that was free a moment ago (the OS may hand it out again: bind to it soon)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
