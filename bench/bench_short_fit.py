"""Fixed costs a short fit pays, on ``examples/monai_3d.py`` (MONAI's DynUNet, 1.4M parameters, 3D):

1. the ONNX export's parity check: onnxruntime against torch on the traced window (what the export
   does now) beside the same check over every window of a whole validation volume (what it did),
   medians of interleaved rounds;
2. what the tracking plugins (mlflow with its default local SQLite store, analytics) add to one
   fit: the example run with them and without them, interleaved, after a warm-up fit that created
   the store; wall time of the whole process, and the CPU seconds of the process, its shipper and
   the store's work beside it.

``python bench/bench_short_fit.py [ROUNDS]`` (default 3); torch's default threads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ShipperWatch, interleaved, median, report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def parity_costs(rounds: int) -> dict[str, float]:
    import monai_3d
    import torch

    from segtrack.inference import export
    from segtrack.inference.windowed import sliding_window

    torch.manual_seed(0)
    model = export.LogitsOnly(monai_3d.dynunet()).eval()
    volume = torch.from_numpy(monai_3d.vessel_volumes(1, seed=1)[0]["image"])[None]
    window = export._first_window(volume, 32)
    folder = Path(tempfile.mkdtemp(prefix="segtrack-bench-export-"))
    path = folder / "model.onnx"
    started = time.perf_counter()
    export._write_onnx(model, window, path, 18, None)
    write_s = time.perf_counter() - started

    def every_window() -> None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def onnx_model(x):
            return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])

        options = {"overlap": 0.5, "mode": "gaussian", "batch_size": 4}
        with torch.no_grad():
            sliding_window(onnx_model, volume, 32, **options), sliding_window(model, volume, 32, **options)

    times = interleaved(
        {"one window": lambda: export._parity(model, window, path), "every window": every_window}, rounds
    )
    shutil.rmtree(folder, ignore_errors=True)
    return {"write": write_s, **{name: median(values) for name, values in times.items()}}


# the seconds the fit spends inside plugin hooks (every PluginManager dispatch; fit_end's bounded
# call included): a deterministic part of the tracking cost, free of the machine's drift
HOOK_CLOCK = (
    "import time; from segtrack.plugins.manager import PluginManager; spent = [0.0]\n"
    "def clocked(method):\n"
    "    def timed(*args, **kwargs):\n"
    "        started = time.perf_counter()\n"
    "        try: return method(*args, **kwargs)\n"
    "        finally: spent[0] += time.perf_counter() - started\n"
    "    return timed\n"
    "PluginManager._run = clocked(PluginManager._run)\n"
    "PluginManager.call_bounded = clocked(PluginManager.call_bounded)\n"
)


def example_fit(workdir: Path, tracked: bool) -> dict[str, float]:
    """One run of the example (1 epoch) in its own process: wall and CPU seconds of each process."""
    watch = ShipperWatch(workdir / ".segtrack" / "spool")
    disabled = "[]" if tracked else "['mlflow', 'analytics']"
    started = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{HOOK_CLOCK}import resource, sys; sys.argv = sys.argv[1:]; import monai_3d; code = monai_3d.main(); "
            "u = resource.getrusage(resource.RUSAGE_SELF); c = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print('CPU', u.ru_utime + u.ru_stime + c.ru_utime + c.ru_stime); print('HOOKS', spent[0]); sys.exit(code)",
            str(ROOT / "examples" / "monai_3d.py"),
            "--set",
            "train.epochs=1",
            "--set",
            f"plugins.disabled={disabled}",
        ],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(ROOT / "examples")},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if out.returncode:
        raise RuntimeError(f"the example failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    if tracked:
        import segtrack_mlflow

        assert segtrack_mlflow.wait_sent(workdir / ".segtrack" / "spool", 180), "the run was not sent in 180 s"
        watch.wait_exited()

    def figure(name: str) -> float:
        return float(next(line for line in out.stdout.splitlines() if line.startswith(name)).split()[1])

    return {"wall": wall, "cpu": figure("CPU"), "hooks": figure("HOOKS"), "shipper": watch.stop()}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    parity = parity_costs(rounds)
    workdir = Path(tempfile.mkdtemp(prefix="segtrack-bench-short-fit-"))
    measured: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    try:
        example_fit(workdir, True)  # warm-up: creates the store and the experiment
        for index in range(rounds):
            for tracked in (False, True) if index % 2 == 0 else (True, False):
                measured[tracked].append(example_fit(workdir, tracked))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def med(tracked: bool, key: str) -> float:
        return median([m[key] for m in measured[tracked]])

    off, on = med(False, "wall"), med(True, "wall")
    extra = sorted(a["wall"] - b["wall"] for a, b in zip(measured[True], measured[False], strict=True))
    walls_off = sorted(m["wall"] for m in measured[False])
    report(
        f"short-fit fixed costs on examples/monai_3d.py (DynUNet 1.4M parameters), {os.cpu_count()} cores, medians "
        f"of {rounds} interleaved rounds (python bench/bench_short_fit.py {rounds})",
        [
            ("ONNX export (dynamo), once", f"{parity['write']:.2f} s", ""),
            ("parity check: the traced window", f"{parity['one window']:.2f} s", "target <= 1 s"),
            ("parity check: every window of a volume", f"{parity['every window']:.2f} s", "what it was"),
            ("1-epoch example: wall off / on", f"{off:.2f} s / {on:.2f} s", f"{on - off:+.2f} s"),
            (
                "1-epoch example: wall on - off, median of the rounds' pairs",
                f"{median(extra):+.2f} s",
                f"target <= 0.5 s (pairs {extra[0]:+.2f} to {extra[-1]:+.2f} s; off alone "
                f"{walls_off[0]:.1f}-{walls_off[-1]:.1f} s)",
            ),
            (
                "1-epoch example: time inside plugin hooks off / on",
                f"{med(False, 'hooks'):.2f} s / {med(True, 'hooks'):.2f} s",
                f"{med(True, 'hooks') - med(False, 'hooks'):+.2f} s (the progress plugin runs in both)",
            ),
            (
                "1-epoch example: CPU of the process off / on",
                f"{med(False, 'cpu'):.2f} s / {med(True, 'cpu'):.2f} s",
                f"{med(True, 'cpu') - med(False, 'cpu'):+.2f} s",
            ),
            ("1-epoch example: CPU of its shipper", f"{med(True, 'shipper'):.2f} s", "SCHED_IDLE, in the fit's gaps"),
        ],
    )


if __name__ == "__main__":
    main()
