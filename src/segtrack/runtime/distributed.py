"""Process-group context under ``torchrun``: ranks from the environment, gloo on CPU, NCCL on CUDA."""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Peer:
    """Another rank's process, as it described itself when the job started."""

    rank: int
    host: str  # hostname and boot id: a process is only checked on the machine that runs it
    pid: int
    started: str  # start time from /proc (guards against a reused pid); "" where unknown


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    peers: tuple[Peer, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` on every rank, in rank order (any picklable object)."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def gather_to_main(self, value: Any) -> list[Any]:
        """Every rank's ``value`` on rank 0, in rank order (an empty list elsewhere)."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size if self.is_main else []
        dist.gather_object(value, gathered if self.is_main else None, dst=0)
        return gathered

    def lost_peers(self) -> list[int]:
        """Ranks on this machine whose process has ended. torchrun stops the surviving ranks with
        the same SIGTERM for a dead rank as for a user's kill; this tells the two apart. Ranks on
        other machines are not checked (their death reaches this rank as a collective error)."""
        here = _host_id()
        return [p.rank for p in self.peers if p.host == here and not _alive(p.pid, p.started)]


def context_from_env() -> DistContext:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun); join the process group when > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        # A rank that exits with its process group alive can abort in gloo's destructor while the
        # others still run (measured: 12 of 30 torchrun jobs under load); leave the group first.
        atexit.register(_leave_process_group)
    me = Peer(rank, _host_id(), os.getpid(), _start_time(os.getpid()))
    everyone: list = [None] * world_size
    dist.all_gather_object(everyone, me)
    return DistContext(rank, world_size, local_rank, tuple(p for p in everyone if p.rank != rank))


LEAVE_WAIT_S = 30.0  # how long a rank waits at exit for the others before leaving the group alone
_meet_at_exit = False  # the last fit on this rank ended normally: its peers are leaving too


def leave_together_at_exit(meet: bool) -> None:
    """Whether this rank, at exit, waits for the others before destroying the group: yes after a fit
    that ended normally (every rank is about to leave); no after a failed or interrupted one (a peer
    may be stuck in a collective and never come)."""
    global _meet_at_exit
    _meet_at_exit = meet


def _leave_process_group() -> None:
    """At exit: meet the other ranks, then destroy the group. A gloo rank that tears its group down
    while a peer is still connected can abort ("terminate called without an active exception", 2 in
    ~20 loaded test runs with a plain destroy); leaving together closes that window. A peer that
    is gone or stuck does not hold this rank longer than LEAVE_WAIT_S."""
    if not dist.is_initialized():
        return
    if _meet_at_exit and dist.get_backend() == "gloo":
        with contextlib.suppress(Exception):  # a peer died or left first: leave alone
            dist.monitored_barrier(timeout=timedelta(seconds=LEAVE_WAIT_S), wait_all_ranks=True)
    dist.destroy_process_group()


def _host_id() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2 :].split()[19]  # field 22, starttime (after pid and (comm))


def _alive(pid: int, started: str) -> bool:
    """True while ``pid`` runs and is the process that started at ``started`` (zombies are dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: existence is all we can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        return True
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] not in ("Z", "X") and (not started or fields[19] == started)


def shard(indices: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's equal share of ``indices`` (wrapped around so every rank gets as many)."""
    if not ctx.enabled:
        return indices
    per_rank = -(-len(indices) // ctx.world_size)
    padded = indices.repeat(-(-per_rank * ctx.world_size // max(1, len(indices))))[: per_rank * ctx.world_size]
    return padded[ctx.rank :: ctx.world_size]
