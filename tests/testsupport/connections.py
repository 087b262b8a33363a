"""Which connections a whole command makes, native code included: ``strace -f -e trace=connect``
sees every connect() (a Python audit hook misses native getaddrinfo and C++ telemetry threads)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

STRACE = "/usr/bin/strace"
_CONNECT = re.compile(r"connect\(\d+, \{sa_family=(AF_INET6?|AF_UNIX), (.*?)\}")
_LOOPBACK = re.compile(r'inet_addr\("127\.|inet_pton\(AF_INET6, "::1"|inet_pton\(AF_INET6, "::ffff:127\.')


def outside_connects(trace: str) -> list[str]:
    """The connect() lines of an strace log that leave the machine or ask a name resolver: any
    non-loopback AF_INET/AF_INET6 address (DNS servers included) and nscd's socket."""
    found = []
    for line in trace.splitlines():
        match = _CONNECT.search(line)
        if match is None:
            continue
        family, address = match.groups()
        if family == "AF_UNIX" and "nscd" not in address:
            continue
        if family != "AF_UNIX" and _LOOPBACK.search(address):
            continue
        found.append(line.strip())
    return found


def traced(command: list[str], log: Path, **kwargs: Any) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``command`` under strace (log written to ``log``): its result and its outside connects."""
    if shutil.which(STRACE) is None:
        pytest.skip("strace is not installed")
    out = subprocess.run([STRACE, "-f", "-qq", "-e", "trace=connect", "-o", str(log), *command], **kwargs)
    return out, outside_connects(log.read_text())
