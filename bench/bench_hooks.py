"""Hook dispatch cost per call per implementation (target <= 2 us), isolated dispatch vs plain pluggy."""

from __future__ import annotations

import time

from benchlib import median, report

from segtrack import hookimpl
from segtrack.plugins.manager import get_plugin_manager
from segtrack.plugins.records import StepResult


def make_plugin(index: int):
    class Counter:
        name = f"counter{index}"

        def __init__(self):
            self.count = 0

        @hookimpl
        def train_batch_end(self, step):
            self.count += 1

    return Counter()


def measure(impls: int, calls: int = 50_000, repeats: int = 7) -> tuple[float, float, float]:
    manager = get_plugin_manager(None, [make_plugin(i) for i in range(impls)], autoload=False, disabled=["progress"])
    step = StepResult(0, 0, 1, 0.5, 1e-3, 8)
    ours, plain = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            manager.call("train_batch_end", trainer=None, run=None, step=step)
        ours.append((time.perf_counter() - started) / calls)
        started = time.perf_counter()
        for _ in range(calls):
            manager.pm.hook.train_batch_end(trainer=None, run=None, step=step)
        plain.append((time.perf_counter() - started) / calls)
    empty = get_plugin_manager(None, [], autoload=False, disabled=["progress"])
    started = time.perf_counter()
    for _ in range(calls):
        empty.call("train_batch_end", trainer=None, run=None, step=step)
    base = (time.perf_counter() - started) / calls
    return median(ours), median(plain), base


def main() -> None:
    rows = []
    for impls in (1, 4, 16):
        ours, plain, empty = measure(impls)
        per_impl = (ours - empty) / impls
        rows.append(
            (
                f"{impls:>2} impl(s): per call per impl",
                f"{per_impl * 1e6:.3f} us",
                f"target <= 2 us; whole call {ours * 1e6:.2f} us, plain pluggy {plain * 1e6:.2f} us "
                f"(isolated/plain {ours / plain:.2f}x)",
            )
        )
    rows.append(("no impl: per call", f"{empty * 1e6:.3f} us", ""))
    report("hook dispatch (python bench/bench_hooks.py)", rows)


if __name__ == "__main__":
    main()
