"""Interleaved A/B timing: the machines are shared and noisy, so variants alternate within each
round and the report uses medians.

Importing benchlib also makes the test-support package (tests/testsupport: a real `mlflow server`,
free ports) importable, so a bench runs as `python bench/bench_NAME.py` from anywhere."""

from __future__ import annotations

import statistics
import sys
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


def report(title: str, rows: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value:>14}  {target}")
