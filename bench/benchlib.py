"""Interleaved A/B timing: the machines are shared and noisy, so variants alternate within each
round and the report uses medians.

Importing benchlib also makes the test-support package (tests/testsupport: a real `mlflow server`,
free ports) importable, so a bench runs as `python bench/bench_NAME.py` from anywhere."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))


def interleaved(
    variants: dict[str, Callable[[], object]], rounds: int, settle: dict[str, Callable[[], object]] | None = None
) -> dict[str, list[float]]:
    """Seconds per variant per round. ``settle[name]`` runs untimed right after that variant
    (e.g. waiting for work it left in the background, so it does not slow the next variant)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(rounds):
        order = list(variants.items())
        if round_index % 2:
            order.reverse()  # neither variant always goes first
        for name, run in order:
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
            if settle and name in settle:
                settle[name]()
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratios(a: list[dict[str, float]], b: list[dict[str, float]], key: str = "wall") -> list[float]:
    """a/b of each round's pair, sorted: the two ran back to back, so the machine's drift between
    rounds (its speed moves by +-15 % here) cancels out of each ratio."""
    return sorted(x[key] / y[key] for x, y in zip(a, b, strict=True))


def report(title: str, rows: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value:>14}  {target}")


def busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def group_cpu(pgid: int) -> float:
    """CPU seconds of every live process in a process group (the server and its workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    total += process_cpu(int(entry.name))
            except OSError:
                continue
    return total


class ShipperWatch:
    """Samples the CPU of the shipper processes of spool folder ``spool_dir`` (their pids read from
    the state files they write when they start) until told to stop; keeps each pid's last reading.
    Reading a few files every 20 ms keeps the watch itself off the cores the fit trains on (a scan
    of every /proc entry at that rate took a noticeable share of one)."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = Path(spool_dir)
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import json

        while not self._stop.is_set():
            for state in self.spool_dir.glob("shipper-*.json"):
                try:
                    pid = json.loads(state.read_text())["pid"]
                except (OSError, ValueError, KeyError):
                    continue
                cpu = process_cpu(pid)
                if cpu and b"segtrack_mlflow.shipper_process" in _command(pid):
                    self.seen[pid] = cpu
            self._stop.wait(0.02)

    def wait_exited(self, timeout: float = 15.0) -> None:
        """Until every shipper seen has exited (its last rounds count too), at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(process_cpu(pid) for pid in list(self.seen)):
            time.sleep(0.05)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.seen.values())
