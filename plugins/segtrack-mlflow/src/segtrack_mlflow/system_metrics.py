"""Opt-in system metrics (``mlflow.system_metrics = true``): CPU, memory, disk, and each GPU's
utilisation and memory (through NVML, when nvidia-ml-py is installed), under MLflow's ``system/``
names. A small process of the fit's own samples them, outside the training process, into the
spool's system.jsonl, which the shipper sends like every other point (so they survive an outage;
MLflow's own monitor stops for good at its first failed call).

The sampler takes its first reading after priming psutil (a first CPU reading without a previous one
is 0 %), then one every interval, and a last one when the fit stops it (SIGTERM) or dies: a fit
longer than the interval has at least two points. A resumed run continues its series.

Run as ``python -m segtrack_mlflow.system_metrics --spool FOLDER --interval SECONDS --parent PID``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from segtrack_mlflow.entries import MetricPoint, encode
from segtrack_mlflow.spool import SYSTEM

log = logging.getLogger("segtrack.mlflow")
CPU_KEY = "system/cpu_utilization_percentage"
FIRST_READING_S = 0.5  # the window of the first CPU reading


def sample(disk_path: Path) -> dict[str, float]:
    """One reading, keyed by MLflow's system metric names."""
    import psutil

    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(disk_path))
    values = {
        CPU_KEY: psutil.cpu_percent(interval=None),
        "system/system_memory_usage_megabytes": (memory.total - memory.available) / 2**20,
        "system/system_memory_usage_percentage": memory.percent,
        "system/disk_usage_percentage": disk.percent,
        "system/disk_usage_megabytes": disk.used / 2**20,
        "system/disk_available_megabytes": disk.free / 2**20,
    }
    values.update(_gpus())
    return values


def _gpus() -> dict[str, float]:
    """Each GPU's memory and utilisation through NVML; nothing without nvidia-ml-py or a GPU (a
    CUDA context here would cost hundreds of MB of every GPU's memory)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {}
    values = {}
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        values[f"system/gpu_{index}_memory_usage_megabytes"] = memory.used / 2**20
        values[f"system/gpu_{index}_memory_usage_percentage"] = 100.0 * memory.used / memory.total
        with contextlib.suppress(Exception):
            values[f"system/gpu_{index}_utilization_percentage"] = float(
                pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            )
    return values


class SystemSampler:
    """The fit's side: starts the sampling process for one spool, stops it (it takes a last reading)."""

    def __init__(self, spool_folder: Path, interval: float, disk_path: Path):
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "segtrack_mlflow.system_metrics",
                "--spool",
                str(spool_folder),
                "--interval",
                str(interval),
                "--disk",
                str(disk_path),
                "--parent",
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("system metrics: the sampler did not stop within %.0f s; killed", timeout)
            self._process.kill()
            self._process.wait()


def _next_step(path: Path) -> int:
    """After the last step of the series in ``path``; drops a line a killed sampler cut short."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
    steps = [json.loads(line)["s"] for line in data.splitlines() if line.endswith(b"}") and CPU_KEY.encode() in line]
    return max(steps, default=-1) + 1


def run(spool_folder: Path, interval: float, disk_path: Path, parent: int) -> None:
    import psutil

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C stops the fit, which stops us
    path = spool_folder / SYSTEM
    step = _next_step(path)
    psutil.cpu_percent(interval=None)  # primed: the next reading covers the time since
    wait = FIRST_READING_S
    with open(path, "ab") as out:
        while True:
            stopped = _wait(stop, wait, parent)
            values, now = sample(disk_path), int(time.time() * 1000)
            out.write(b"".join(_line(MetricPoint(k, v, step, now)) for k, v in values.items()))
            out.flush()
            step, wait = step + 1, interval
            if stopped:
                return


def _wait(stop: threading.Event, seconds: float, parent: int) -> bool:
    """Wait ``seconds``; True when told to stop or the fit's process is gone."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stop.wait(min(left, 1.0)) or os.getppid() != parent:
            return True
    return False


def _line(point: MetricPoint) -> bytes:
    return (json.dumps(encode(point), separators=(",", ":")) + "\n").encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segtrack_mlflow.system_metrics")
    parser.add_argument("--spool", required=True, type=Path)
    parser.add_argument("--interval", required=True, type=float)
    parser.add_argument("--disk", required=True, type=Path)
    parser.add_argument("--parent", required=True, type=int)
    args = parser.parse_args(argv)
    run(args.spool, args.interval, args.disk, args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
