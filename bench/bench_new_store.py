"""What the first fit into a new local SQLite store pays for waiting until its shipper created the
store and sent the run (so a reader opened right after does not race MLflow's first migration):
`segtrack train` as a user runs it, in a fresh folder (new store) against a folder whose store
exists (the fit returns without waiting). Whole commands, interleaved, medians; after each command
the bench waits, untimed, until its shipper has exited.
``python bench/bench_new_store.py [ROUNDS]`` (default 3).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import interleaved, median, report  # first: it makes testsupport importable

import segtrack_mlflow

SETS = ["train.epochs=2", "data.num_samples=32", "plugins.disabled=['analytics']"]


def _train(folder: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SEGTRACK_"))}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "ORT_DISABLE_TELEMETRY": "1"})
    command = [sys.executable, "-m", "segtrack", "train", *[a for s in SETS for a in ("--set", s)]]
    subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)


def _settled(folder: Path) -> None:
    segtrack_mlflow.wait_sent(folder / ".segtrack" / "spool", 120)
    time.sleep(1.0)  # the shipper exits once all is sent and no fit holds a spool


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    root = Path(tempfile.mkdtemp(prefix="bench-new-store-"))
    existing = root / "existing"
    existing.mkdir()
    _train(existing)
    _settled(existing)
    fresh = root / "fresh"

    def new_store() -> None:
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        _train(fresh)

    try:
        times = interleaved(
            {"new store": new_store, "existing store": lambda: _train(existing)},
            rounds,
            settle={"new store": lambda: _settled(fresh), "existing store": lambda: _settled(existing)},
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    new, old = median(times["new store"]), median(times["existing store"])
    report(
        f"`segtrack train` ({', '.join(SETS)}), {rounds} interleaved rounds, medians",
        [
            ("new store", f"{new:.2f} s", "waits until the store exists and the run is sent"),
            ("existing store", f"{old:.2f} s", "returns without waiting"),
            ("difference", f"{new - old:+.2f} s", "the first fit's wait"),
        ],
    )


if __name__ == "__main__":
    main()
