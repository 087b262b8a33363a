"""What segtrack's tracking costs a loop that is not its trainer: a hand-written loop (FitSession),
Lightning (SegtrackCallback) and MONAI's SupervisedTrainer (SegtrackHandler), each a fit of >= 10 s
with the mlflow plugin logging to a live local `mlflow server`, against the same loop without
segtrack, interleaved, medians. Torch keeps its default threads (all cores), as users run it.

Per variant: the fit's wall time (measured inside its process, loop start to end) and the CPU
seconds of every process on the machine (from /proc/stat) from the process's start until, for a
tracked fit, its shipper has sent the run: the training process, the shipper process and the
server's share. ``python bench/bench_loops.py [ROUNDS]`` (default 3).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import median, report  # first: it makes testsupport importable

import segtrack_mlflow
from testsupport.mlflow_server import MlflowServer

HERE = Path(__file__).parent
EPOCHS = {"own": 28, "lightning": 32, "ignite": 24}  # >= 10 s each on a 2-core machine


def busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run(loop: str, variant: str, workdir: Path, uri: str) -> tuple[float, float]:
    """(fit wall seconds, machine CPU seconds until the run is sent)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "SEGTRACK_MLFLOW__SPOOL_DIR": str(workdir / "spool")}
    env.pop("OMP_NUM_THREADS", None)  # torch's default threads
    cpu = busy_cpu_seconds()
    out = subprocess.run(
        [sys.executable, str(HERE / "loop_fits.py"), loop, variant, str(EPOCHS[loop])],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    if variant == "tracked":
        assert segtrack_mlflow.wait_sent(workdir / "spool", 120), "the shipper did not send the run in 120 s"
    return float(out.stdout.strip().splitlines()[-1].split()[0]), busy_cpu_seconds() - cpu


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    workdir = Path(tempfile.mkdtemp(prefix="segtrack-bench-loops-"))
    server = MlflowServer(f"sqlite:///{workdir / 'server.db'}", workdir).start()
    walls: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    try:
        for loop in EPOCHS:  # warm-up: file caches, the experiment, the first shipper
            run(loop, "tracked", workdir, server.uri)
        for index in range(rounds):
            for loop in EPOCHS:
                for variant in ("plain", "tracked") if index % 2 == 0 else ("tracked", "plain"):
                    wall, cpu = run(loop, variant, workdir, server.uri)
                    walls.setdefault((loop, variant), []).append(wall)
                    cpus.setdefault((loop, variant), []).append(cpu)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rows = []
    for loop in EPOCHS:
        plain, tracked = median(walls[(loop, "plain")]), median(walls[(loop, "tracked")])
        cpu_plain, cpu_tracked = median(cpus[(loop, "plain")]), median(cpus[(loop, "tracked")])
        rows += [
            (f"{loop}: fit wall plain / tracked", f"{plain:.2f} s / {tracked:.2f} s", ""),
            (f"{loop}: tracked / plain", f"{tracked / plain:.3f}x", "target <= 1.03x"),
            (
                f"{loop}: CPU all processes",
                f"{cpu_plain:.1f} s / {cpu_tracked:.1f} s",
                f"+{cpu_tracked - cpu_plain:.1f} s",
            ),
        ]
    report(
        f"segtrack tracking under other loops (mlflow plugin, live local server), median of {rounds} "
        f"interleaved rounds, torch default threads ({os.cpu_count()} cores) (python bench/bench_loops.py)",
        rows,
    )


if __name__ == "__main__":
    main()
