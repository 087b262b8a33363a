"""What segtrack's tracking costs a loop that is not its trainer: a hand-written loop (FitSession),
Lightning (SegtrackCallback) and MONAI's SupervisedTrainer (SegtrackHandler), each a fit of >= 10 s
with the mlflow plugin logging to a live local `mlflow server`, against the same loop without
segtrack, interleaved, medians. Torch keeps its default threads (all cores), as users run it.

Per variant: the fit's wall time (measured inside its process, loop start to end); the CPU seconds
of the training process (its own count), of the shipper process (sampled from /proc until it
exits) and of the server (its process group) from the fit's start until its run is sent; and the
CPU of every process on the machine over the same span (/proc/stat: noisy on a shared machine).
``python bench/bench_loops.py [ROUNDS]`` (default 5).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import ShipperWatch, busy_cpu_seconds, group_cpu, median, report  # first: testsupport importable

import segtrack_mlflow
from testsupport.mlflow_server import MlflowServer

HERE = Path(__file__).parent
EPOCHS = {"own": 28, "lightning": 32, "ignite": 24}  # >= 10 s each on a 2-core machine


def run(loop: str, variant: str, workdir: Path, uri: str, server_pgid: int) -> dict[str, float]:
    """The fit's wall seconds and the CPU seconds of each process, until its run is sent and its
    shipper has exited."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "SEGTRACK_MLFLOW__SPOOL_DIR": str(workdir / "spool")}
    env.pop("OMP_NUM_THREADS", None)  # torch's default threads
    machine, server, watch = busy_cpu_seconds(), group_cpu(server_pgid), ShipperWatch(workdir / "spool")
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
        watch.wait_exited()
    wall, training = (float(v) for v in out.stdout.strip().splitlines()[-1].split())
    return {
        "wall": wall,
        "training": training,
        "shipper": watch.stop(),
        "server": group_cpu(server_pgid) - server,
        "machine": busy_cpu_seconds() - machine,
    }


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    workdir = Path(tempfile.mkdtemp(prefix="segtrack-bench-loops-"))
    server = MlflowServer(f"sqlite:///{workdir / 'server.db'}", workdir).start()
    assert server.process is not None
    pgid = os.getpgid(server.process.pid)
    measured: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for loop in EPOCHS:  # warm-up: file caches, the experiment
            run(loop, "tracked", workdir, server.uri, pgid)
        for index in range(rounds):
            for loop in EPOCHS:
                for variant in ("plain", "tracked") if index % 2 == 0 else ("tracked", "plain"):
                    measured.setdefault((loop, variant), []).append(run(loop, variant, workdir, server.uri, pgid))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def med(loop: str, variant: str, key: str) -> float:
        return median([m[key] for m in measured[(loop, variant)]])

    rows = []
    for loop in EPOCHS:
        plain, tracked = med(loop, "plain", "wall"), med(loop, "tracked", "wall")
        rows += [
            (f"{loop}: fit wall plain / tracked", f"{plain:.2f} s / {tracked:.2f} s", f"{tracked / plain:.3f}x"),
            (
                f"{loop}: CPU training process",
                f"{med(loop, 'plain', 'training'):.1f} s / {med(loop, 'tracked', 'training'):.1f} s",
                f"+{med(loop, 'tracked', 'training') - med(loop, 'plain', 'training'):.1f} s",
            ),
            (f"{loop}: CPU shipper process (tracked)", f"{med(loop, 'tracked', 'shipper'):.2f} s", ""),
            (f"{loop}: CPU server (tracked)", f"{med(loop, 'tracked', 'server'):.2f} s", ""),
            (
                f"{loop}: CPU whole machine",
                f"{med(loop, 'plain', 'machine'):.1f} s / {med(loop, 'tracked', 'machine'):.1f} s",
                "noisy: other tenants",
            ),
        ]
    report(
        f"segtrack tracking under other loops (mlflow plugin, live local server), median of {rounds} "
        f"interleaved rounds, torch default threads ({os.cpu_count()} cores), target tracked/plain <= 1.03x "
        "(python bench/bench_loops.py)",
        rows,
    )


if __name__ == "__main__":
    main()
