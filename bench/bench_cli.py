"""`segtrack --help` and `segtrack plugins` wall time (target <= 0.5 s), median of 9 runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from benchlib import median, report


def wall(args: list[str], runs: int = 9) -> float:
    exe = shutil.which("segtrack", path=os.path.dirname(sys.executable)) or "segtrack"
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([exe, *args], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return median(times)


def main() -> None:
    wall(["--version"], 1)  # warm the file cache once
    baseline = median([_python_startup() for _ in range(9)])
    help_s, plugins_s = wall(["--help"]), wall(["plugins"])
    report(
        "CLI start-up (python bench/bench_cli.py)",
        [
            (
                "segtrack --help",
                f"{help_s:.3f} s",
                f"target <= 0.5 s ({help_s / baseline:.1f}x a bare `python -c pass`)",
            ),
            ("segtrack plugins", f"{plugins_s:.3f} s", "no torch import"),
            ("python -c pass", f"{baseline:.3f} s", "interpreter floor"),
        ],
    )


def _python_startup() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
