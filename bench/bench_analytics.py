"""Reading runs back: segtrack-analytics vs MLflow's own client, at 200, 2,000 and 10,000 runs.

Targets at 10k runs: cold load with full histories <= 4 s, refresh after 100 new runs <= 0.5 s,
summary and top-N queries <= 50 ms. `get_metric_history` per run is timed on a sample of runs
and extrapolated (the full loop takes many minutes at 10k).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import report
from store_generator import METRICS, add_runs, migrated_store

from segtrack_analytics import RunAnalytics

SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "200,2000,10000").split(",")]
HISTORY_SAMPLE = 40


def timed(func, repeats: int = 1):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def bench_size(root: Path, runs: int) -> list[tuple[str, str, str]]:
    db = root / f"store-{runs}.db"
    uri = migrated_store(db)
    add_runs(db, runs)
    cache = root / f"cache-{runs}"

    cold, _ = timed(lambda: RunAnalytics(uri, cache_dir=None).load_experiment_runs("bench"), 3)
    first, _ = timed(lambda: RunAnalytics(uri, cache_dir=cache).load_experiment_runs("bench"))
    warm, _ = timed(lambda: RunAnalytics(uri, cache_dir=cache).load_experiment_runs("bench"), 3)
    add_runs(db, 100, seed=1, start_ms=1_800_000_000_000)
    analytics = RunAnalytics(uri, cache_dir=cache)
    refresh, stats = timed(lambda: analytics.load_experiment_runs("bench"))
    assert stats.reread == 100 and stats.runs == runs + 100, stats
    summary, _ = timed(lambda: analytics.cross_fold_summary("val_dice"), 7)
    top, _ = timed(lambda: analytics.top_models("val_dice", 5), 7)

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("bench").experiment_id
    search, frame = timed(lambda: _search(uri, experiment_id))
    sample = list(frame["run_id"])[:HISTORY_SAMPLE]
    per_run, _ = timed(lambda: [client.get_metric_history(r, k) for r in sample for k in METRICS])
    histories = per_run / len(sample) * (runs + 100)
    ratio = (search + histories) / cold
    return [
        (
            f"{runs:>6} runs: cold load (runs + metrics)",
            f"{cold:.3f} s",
            "target <= 4 s at 10k" if runs == 10000 else "",
        ),
        (f"{runs:>6} runs: first load, writing cache", f"{first:.3f} s", ""),
        (f"{runs:>6} runs: warm load from cache", f"{warm:.3f} s", ""),
        (
            f"{runs:>6} runs: refresh after 100 new runs",
            f"{refresh:.3f} s",
            "target <= 0.5 s at 10k" if runs == 10000 else "",
        ),
        (f"{runs:>6} runs: cross_fold_summary", f"{summary * 1e3:.1f} ms", "target <= 50 ms"),
        (f"{runs:>6} runs: top_models(5)", f"{top * 1e3:.1f} ms", "target <= 50 ms"),
        (
            f"{runs:>6} runs: mlflow.search_runs alone",
            f"{search:.3f} s",
            f"{search / cold:.1f}x our cold load (wide table only)",
        ),
        (
            f"{runs:>6} runs: + get_metric_history per run",
            f"{search + histories:.1f} s",
            f"extrapolated from {len(sample)} runs x {len(METRICS)} metrics; {ratio:.0f}x our cold load",
        ),
    ]


def _search(uri, experiment_id):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs([experiment_id], max_results=100_000)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="segtrack-bench-analytics-"))
    os.chdir(root)
    rows = []
    try:
        for runs in SIZES:
            rows += bench_size(root, runs)
            print(f"done {runs}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report("reading runs back, 4 metrics x 20 epochs per run (python bench/bench_analytics.py)", rows)


if __name__ == "__main__":
    main()
