"""Which connections a whole command makes, native code included: ``strace -f -e trace=connect``
sees every connect() (a Python audit hook misses native getaddrinfo and C++ telemetry threads)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

STRACE = "/usr/bin/strace"
_CONNECT = re.compile(r"connect\(\d+, \{sa_family=(AF_INET6?|AF_UNIX), (.*?)\}")
# MLflow skips its telemetry by itself under pytest or CI (mlflow.telemetry.utils): a command under
# test must not carry these variables, or it would pass without segtrack's own switches
QUIET_BY_ITSELF = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD", "TRAVIS")
_LOOPBACK = re.compile(r'inet_addr\("127\.|inet_pton\(AF_INET6, "::1"|inet_pton\(AF_INET6, "::ffff:127\.')


def outside_connects(trace: str) -> list[str]:
    """The connect() lines of an strace log that leave the machine or ask a name resolver: any
    non-loopback AF_INET/AF_INET6 address, port 53 on any address (a local resolver such as
    systemd-resolved's 127.0.0.53 forwards the query), systemd-resolved's socket and a reached
    nscd socket."""
    found = []
    for line in trace.splitlines():
        match = _CONNECT.search(line)
        if match is None:
            continue
        family, address = match.groups()
        # nscd's socket counts when the connect succeeds: a lookup sent there is answered out of sight
        # (a failed one, no nscd running, falls back to files or to a DNS connect this log shows)
        if family == "AF_UNIX":
            if "resolve" not in address and ("nscd" not in address or "= -1 ENOENT" in line):
                continue
        elif _LOOPBACK.search(address) and "_port=htons(53)" not in address:
            continue
        found.append(line.strip())
    return found


def user_env(**extra: str) -> dict[str, str]:
    """This process's environment as a user's shell would have it: no pytest or CI marker, no
    telemetry switch (``import segtrack`` in the test process set ``ORT_DISABLE_TELEMETRY``), no
    SEGTRACK_/MLFLOW_ setting; one torch thread. ``extra`` is added last."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "SEGTRACK_", "PYTEST_", "ORT_")) and k not in (*QUIET_BY_ITSELF, "DO_NOT_TRACK")
    }
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def traced(command: list[str], log: Path, **kwargs: Any) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``command`` under strace (log written to ``log``): its result and its outside connects."""
    if shutil.which(STRACE) is None:
        pytest.skip("strace is not installed")
    out = subprocess.run(
        [STRACE, "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o", str(log), *command], **kwargs
    )
    return out, outside_connects(log.read_text())
