"""segtrack-analytics on 100,000 runs (8,000,000 metric points) or more: opt-in, it takes minutes.

    BENCH_LARGE=1 python bench/bench_analytics_100k.py [RUNS]

Without BENCH_LARGE=1 it prints that it skipped (so `make bench` stays quick). Targets at 100k: cold
load <= 5 s with peak RSS <= 1.5 GB, cross_fold_summary and top_models <= 100 ms, refresh after
100 new runs <= 1 s. At 1,000,000 runs (`... bench_analytics_100k.py 1000000`, BENCH_REFRESH_ROUNDS=0
BENCH_COLD_ROUNDS=1) it reports the same figures: loading and answering without running out of memory.

The store: bench/store_generator.py, i.e. a database MLflow's client created and migrated, filled
with SQL inserts that match MLflow's schema (10,000 runs per batch; MLflow's client would need hours
for 100,000 runs; this takes ~1.5 minutes on 2 cores, 2.4 GB; 1,000,000 runs: ~24 GB). Set
BENCH_STORE_DIR to keep it between runs (it is made once per run count; refreshes then add runs to a
copy: BENCH_REFRESH_ROUNDS=0 leaves the refresh rows out, and the copy with them).

Each cold load runs in a fresh process (BENCH_COLD_ROUNDS of them, medians reported), which times,
one after the other: the load until the tables are ready, its background cache write, the first
cross_fold_summary and top_models(5), then the first query of ``metrics`` (it reads the histories,
which a load leaves in the store) and the cache write of those. Beside each wall time: the CPU
seconds of the process (all threads), and its peak RSS so far (``ru_maxrss``, largest of the rounds).
Warm queries and refreshes are medians: refreshes alternate with adding 100 runs, each refresh a
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
COLD_ROUNDS = int(os.environ.get("BENCH_COLD_ROUNDS", "3"))
REFRESH_ROUNDS = int(os.environ.get("BENCH_REFRESH_ROUNDS", "3"))
CHILD = """
import json, resource, sys, time
from segtrack_analytics import RunAnalytics
marks, started = {}, time.perf_counter()
def mark(name):
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    marks[name] = {"wall": time.perf_counter() - started, "cpu": cpu, "rss": usage.ru_maxrss * 1024}
analytics = RunAnalytics(sys.argv[1], cache_dir=sys.argv[2])
stats = analytics.load_experiment_runs("bench")
mark("ready")
analytics.wait_for_cache()
mark("written")
analytics.cross_fold_summary("val_dice")
mark("summary")
analytics.top_models("val_dice", 5)
mark("top")
points = analytics.query("SELECT count(*) AS n FROM metrics").column("n")[0].as_py()
mark("histories")
analytics.wait_for_cache()
mark("histories written")
print(json.dumps({"marks": marks, "runs": stats.runs, "points": points}))
"""
PHASES = ("ready", "written", "summary", "top", "histories", "histories written")


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
        if keep and REFRESH_ROUNDS:  # the kept store must not grow: refreshes add runs to a copy
            db = root / "store.db"
            shutil.copyfile(uri[len("sqlite:///") :], db)
            uri = f"sqlite:///{db}"
        rows = cold(root, uri, runs)
        if REFRESH_ROUNDS:
            rows += warm(root / "cold-0", uri, runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    title = f"segtrack-analytics at {runs:,} runs (BENCH_LARGE=1 python bench/bench_analytics_100k.py {runs})"
    report(title, rows)


def cold(root: Path, uri: str, runs: int) -> list[tuple[str, str, str]]:
    """Fresh processes, each into an empty cache folder: per phase, median wall and CPU seconds, and
    the largest peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    results = []
    for round_index in range(COLD_ROUNDS):
        cache = root / f"cold-{round_index}"
        out = subprocess.run(
            [sys.executable, "-c", CHILD, uri, str(cache)], env=env, capture_output=True, text=True, check=True
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        assert results[-1]["runs"] == runs, results[-1]
        if round_index:  # the first round's cache serves the warm rounds
            shutil.rmtree(cache, ignore_errors=True)
    rows, previous = [], None
    for phase in PHASES:
        wall = median([r["marks"][phase]["wall"] - (r["marks"][previous]["wall"] if previous else 0) for r in results])
        cpu = median([r["marks"][phase]["cpu"] - (r["marks"][previous]["cpu"] if previous else 0) for r in results])
        rss = max(r["marks"][phase]["rss"] for r in results)
        notes = f"CPU {_seconds(cpu)}; peak RSS {rss / 1e9:.2f} GB"
        rows.append((f"cold process: {LABELS[phase]}", _seconds(wall), notes))
        previous = phase
    ready = median([r["marks"]["ready"]["wall"] for r in results])
    rss = max(r["marks"]["top"]["rss"] for r in results)
    points = results[0]["points"]
    rows.append(
        (
            "cold process: load + summary + top",
            _seconds(median([r["marks"]["top"]["wall"] for r in results])),
            f"peak RSS {rss / 1e9:.2f} GB; target at 100k: ready <= 5 s ({ready:.2f} s), RSS <= 1.5 GB",
        )
    )
    rows.append(("", "", f"median of {len(results)} fresh processes; {points:,} metric points"))
    return rows


LABELS = {
    "ready": "load, tables ready",
    "written": "+ its background cache write",
    "summary": "+ first cross_fold_summary",
    "top": "+ first top_models(5)",
    "histories": "+ first metrics query (histories read)",
    "histories written": "+ their cache write",
}


def warm(cache: Path, uri: str, runs: int) -> list[tuple[str, str, str]]:
    from segtrack_analytics import RunAnalytics

    warm_times, refresh_times, summary_times, top_times = [], [], [], []
    for round_index in range(REFRESH_ROUNDS):
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
    rounds = f"median of {REFRESH_ROUNDS}"
    queries = f"median of {3 * REFRESH_ROUNDS}"
    return [
        ("warm load from cache", f"{median(warm_times):.3f} s", rounds),
        ("refresh after 100 new runs", f"{median(refresh_times):.3f} s", f"target <= 1 s; {rounds}"),
        ("cross_fold_summary", f"{median(summary_times) * 1e3:.1f} ms", f"target <= 100 ms; {queries}"),
        ("top_models(5)", f"{median(top_times) * 1e3:.1f} ms", f"target <= 100 ms; {queries}"),
    ]


def _seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 1 else f"{value:.2f} s"


if __name__ == "__main__":
    main()
