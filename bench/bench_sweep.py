"""What `segtrack sweep` costs per trial against the same fits run with `segtrack train` in a shell
loop (target <= 1.05x): a grid of N learning rates, both tracked in a local SQLite MLflow store,
no ONNX export, interleaved rounds in fresh folders, medians.

    python bench/bench_sweep.py [ROUNDS] [TRIALS] [EPOCHS]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import interleaved, median, report

SETS = [
    "data.num_samples=32",
    "data.image_size=32",
    "model.width=4",
    "export.enabled=false",
    "mlflow.sample_overlays=0",
    "plugins.disabled=['analytics']",
]


def _exe() -> str:
    return shutil.which("segtrack", path=os.path.dirname(sys.executable)) or "segtrack"


def _sets(*extra: str) -> list[str]:
    return [a for s in [*SETS, *extra] for a in ("--set", s)]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    trials = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    rates = [round(0.001 * (i + 1), 6) for i in range(trials)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGTRACK_", "MLFLOW_TRACKING"))}
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    counter = iter(range(10**6))

    def folder() -> Path:
        path = root / f"run-{next(counter)}"
        path.mkdir()
        return path

    def shell_loop() -> None:
        cwd = folder()
        for lr in rates:
            subprocess.run(
                [_exe(), "train", *_sets(f"train.epochs={epochs}", f"train.lr={lr}", f"checkpoint.dir='ckpt-{lr}'")],
                cwd=cwd, env=env, check=True, capture_output=True,
            )  # fmt: skip

    def sweep() -> None:
        cwd = folder()
        space = f"sweep.space={{'train.lr' = {rates}}}"
        subprocess.run(
            [_exe(), "sweep", "--study", "bench", "--trials", str(trials),
             *_sets(f"train.epochs={epochs}", space, "sweep.sampler='grid'", "sweep.export='none'",
                    "sweep.pruner='none'")],
            cwd=cwd, env=env, check=True, capture_output=True,
        )  # fmt: skip

    try:
        times = interleaved({"segtrack train loop": shell_loop, "segtrack sweep": sweep}, rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    loop_s, sweep_s = median(times["segtrack train loop"]), median(times["segtrack sweep"])
    command = f"python bench/bench_sweep.py {rounds} {trials} {epochs}"
    report(
        f"Sweep overhead per trial ({command}; medians of {rounds} rounds)",
        [
            (
                "segtrack train x N (shell loop)",
                f"{loop_s / trials:.2f} s/trial",
                f"rounds {times['segtrack train loop']}",
            ),
            ("segtrack sweep --trials N", f"{sweep_s / trials:.2f} s/trial", f"rounds {times['segtrack sweep']}"),
            ("sweep / loop", f"{sweep_s / loop_s:.3f}x", "target <= 1.05x"),
        ],
    )


if __name__ == "__main__":
    main()
