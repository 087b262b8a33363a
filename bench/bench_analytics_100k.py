"""segtrack-analytics on 100,000 runs (8,000,000 metric points): opt-in, it takes minutes.

    BENCH_LARGE=1 python bench/bench_analytics_100k.py [RUNS]

Without BENCH_LARGE=1 it prints that it skipped (so `make bench` stays quick). Targets: cold load
<= 30 s with peak RSS <= 3 GB, cross_fold_summary and top_models <= 100 ms, refresh after 100 new
runs <= 1 s.

The store: bench/store_generator.py, i.e. a database MLflow's client created and migrated, filled
with SQL inserts that match MLflow's schema (10,000 runs per batch; MLflow's client would need hours
for 100,000 runs; this takes ~5 minutes on 2 cores, 2.4 GB). Set BENCH_STORE_DIR to keep it between
runs (it is made once per run count; refreshes then add runs to a copy).

The cold load runs in a fresh process, which reports the seconds until the tables are ready, the
seconds until its background cache write has ended, and its peak RSS (``ru_maxrss``, cache write
included). Queries and refreshes are medians: refreshes alternate with adding 100 runs, each refresh a
fresh RunAnalytics reading the cache (as a new `segtrack runs` command would).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import median, report
from store_generator import add_runs, migrated_store

BATCH = 10_000
ROUNDS = 3
CHILD = """
import json, resource, sys, time
from segtrack_analytics import RunAnalytics
started = time.perf_counter()
analytics = RunAnalytics(sys.argv[1], cache_dir=sys.argv[2])
stats = analytics.load_experiment_runs("bench")
ready = time.perf_counter() - started
analytics.wait_for_cache()
written = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"ready": ready, "written": written, "rss": rss, "runs": stats.runs, "points": stats.metric_points}))
"""


def make_store(folder: Path, runs: int) -> str:
    db = folder / f"store-{runs}.db"
    if db.exists():
        return f"sqlite:///{db}"
    partial = folder / f"store-{runs}.partial.db"
    partial.unlink(missing_ok=True)
    migrated_store(partial)
    for batch in range(0, runs, BATCH):
        add_runs(partial, min(BATCH, runs - batch), seed=batch // BATCH, start_ms=1_700_000_000_000 + batch * 1000)
        print(f"store: {batch + BATCH} runs", file=sys.stderr, flush=True)
    partial.rename(db)
    return f"sqlite:///{db}"


def main() -> None:
    if os.environ.get("BENCH_LARGE") != "1":
        print("bench_analytics_100k: skipped (minutes); run with BENCH_LARGE=1")
        return
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    root = Path(tempfile.mkdtemp(prefix="segtrack-bench-analytics-100k-"))
    keep = os.environ.get("BENCH_STORE_DIR")
    store_dir = Path(keep) if keep else root
    store_dir.mkdir(parents=True, exist_ok=True)
    try:
        uri = make_store(store_dir, runs)
        if keep:  # the kept store must not grow: refreshes add runs to a copy
            db = root / "store.db"
            shutil.copyfile(uri[len("sqlite:///") :], db)
            uri = f"sqlite:///{db}"
        rows = bench(root, uri, runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(f"segtrack-analytics at {runs:,} runs (BENCH_LARGE=1 python bench/bench_analytics_100k.py)", rows)


def bench(root: Path, uri: str, runs: int) -> list[tuple[str, str, str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cache = root / "cache"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, uri, str(cache)], env=env, capture_output=True, text=True, check=True
    )
    cold = json.loads(out.stdout.strip().splitlines()[-1])
    assert cold["runs"] == runs, cold

    from segtrack_analytics import RunAnalytics

    warm_times, refresh_times, summary_times, top_times = [], [], [], []
    for round_index in range(ROUNDS):
        started = time.perf_counter()
        RunAnalytics(uri, cache_dir=cache).load_experiment_runs("bench")
        warm_times.append(time.perf_counter() - started)
        add_runs(
            uri[len("sqlite:///") :], 100, seed=1000 + round_index, start_ms=1_800_000_000_000 + round_index * 10**6
        )
        analytics = RunAnalytics(uri, cache_dir=cache)
        started = time.perf_counter()
        stats = analytics.load_experiment_runs("bench")
        refresh_times.append(time.perf_counter() - started)
        assert (stats.reread, stats.runs) == (100, runs + 100 * (round_index + 1)), stats
        analytics.wait_for_cache()
        for times, query, args in (
            (summary_times, analytics.cross_fold_summary, ("val_dice",)),
            (top_times, analytics.top_models, ("val_dice", 5)),
        ):
            for _ in range(3):
                started = time.perf_counter()
                query(*args)
                times.append(time.perf_counter() - started)
    rounds = f"median of {ROUNDS}"
    return [
        ("cold load, tables ready", f"{cold['ready']:.1f} s", f"target <= 30 s; {cold['points']:,} metric points"),
        ("cold load, background cache write ended", f"{cold['written']:.1f} s", ""),
        ("cold load process, peak RSS", f"{cold['rss'] / 1e9:.2f} GB", "target <= 3 GB (ru_maxrss)"),
        ("warm load from cache", f"{median(warm_times):.3f} s", rounds),
        ("refresh after 100 new runs", f"{median(refresh_times):.3f} s", f"target <= 1 s; {rounds}"),
        ("cross_fold_summary", f"{median(summary_times) * 1e3:.1f} ms", "target <= 100 ms; median of 9"),
        ("top_models(5)", f"{median(top_times) * 1e3:.1f} ms", "target <= 100 ms; median of 9"),
    ]


if __name__ == "__main__":
    main()
