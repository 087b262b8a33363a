"""Opt-in system metrics (``mlflow.system_metrics = true``): CPU, memory, disk, and each GPU's
utilisation and memory, sampled by a thread of our own into the spool under MLflow's ``system/``
names. Spooled like every other point, they survive an outage (MLflow's own monitor stops for
good at its first failed call)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("segtrack.mlflow")


def sample(disk_path: Path) -> dict[str, float]:
    """One reading, keyed by MLflow's system metric names."""
    import psutil

    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(disk_path))
    values = {
        "system/cpu_utilization_percentage": psutil.cpu_percent(interval=None),
        "system/system_memory_usage_megabytes": (memory.total - memory.available) / 2**20,
        "system/system_memory_usage_percentage": memory.percent,
        "system/disk_usage_percentage": disk.percent,
        "system/disk_usage_megabytes": disk.used / 2**20,
        "system/disk_available_megabytes": disk.free / 2**20,
    }
    values.update(_gpus())
    return values


def _gpus() -> dict[str, float]:
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    values = {}
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        used = total - free
        values[f"system/gpu_{index}_memory_usage_megabytes"] = used / 2**20
        values[f"system/gpu_{index}_memory_usage_percentage"] = 100.0 * used / total
        with contextlib.suppress(Exception):  # needs NVML (pynvml); memory is still reported
            values[f"system/gpu_{index}_utilization_percentage"] = float(torch.cuda.utilization(index))
    return values


class SystemMonitor:
    """Calls ``record(values, step)`` every ``interval`` seconds until stopped; steps count up
    from ``first_step`` (a resumed run continues its own series)."""

    def __init__(
        self, record: Callable[[dict[str, float], int], None], interval: float, disk_path: Path, first_step: int = 0
    ):
        self.record, self.interval, self.disk_path, self.step = record, interval, disk_path, first_step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segtrack-system-metrics", daemon=True)

    def start(self) -> SystemMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import psutil

        # primed here, in the sampling thread: psutil keeps the previous CPU reading per thread, and a
        # first reading without one is 0 %
        psutil.cpu_percent(interval=None)
        while not self._stop.wait(self.interval):
            self._sample()
        self._sample()  # a last reading when the fit stops: a fit longer than the interval has two points

    def _sample(self) -> None:
        try:
            self.record(sample(self.disk_path), self.step)
        except Exception as exc:  # a failing reading must not end the series
            log.warning("system metrics: sampling failed (%s: %s)", type(exc).__name__, exc)
            return
        self.step += 1
