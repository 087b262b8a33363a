"""Reading runs back: segtrack-analytics vs MLflow's own client, at 200, 2,000 and 10,000 runs.

Targets at 10k runs: cold load (the wide ``runs`` table; the metric histories wait in the store
for the first query of ``metrics``; cache written in the background) >= 10x faster than
`mlflow.search_runs` (which reads the wide table only), refresh after 100 new runs <= 0.5 s,
summary and top-N queries <= 50 ms. A cold load followed by a first ``metrics`` query (all the
histories) is set beside `search_runs` + `get_metric_history` per run. The three variants alternate
in interleaved rounds and ratios are of their medians, CPU seconds (all threads) beside wall; a cold
round waits for its cache write outside the timed part, so the write does not slow the next variant.
`get_metric_history` per run is timed on a sample of runs and extrapolated (the full loop takes many
minutes at 10k).

    BENCH_SIZES=10000 BENCH_ROUNDS=5 python bench/bench_analytics.py

The stores are written by bench/store_generator.py (SQL matching MLflow's schema, in a store MLflow
created and migrated). To measure another store, e.g. one written by MLflow's own client:
`BENCH_STORE=sqlite:///path/mlflow.db BENCH_EXPERIMENT=name python bench/bench_analytics.py`
(nothing is added to it: the refresh row is left out).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import interleaved, median, report
from store_generator import METRICS, add_runs, migrated_store

from segtrack_analytics import RunAnalytics

SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "200,2000,10000").split(",")]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
HISTORY_SAMPLE = 40


def timed(func, repeats: int = 1):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


class ColdLoads:
    """Cold loads into fresh cache folders; ``settle`` waits for the last one's cache write."""

    def __init__(self, uri: str, experiment: str, root: Path):
        self.uri, self.experiment, self.root, self.count = uri, experiment, root, 0
        self.last: RunAnalytics | None = None

    def load(self) -> None:
        self.count += 1
        self.last = RunAnalytics(self.uri, cache_dir=self.root / f"cold-{self.count}")
        self.last.load_experiment_runs(self.experiment)

    def load_with_histories(self) -> None:
        self.load()
        assert self.last is not None
        self.last.query("SELECT count(*) FROM metrics")

    def settle(self) -> None:
        if self.last is not None:
            self.last.wait_for_cache()


def bench_store(root: Path, uri: str, experiment: str, label: str, new_runs=None) -> list[tuple[str, str, str]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    cold = ColdLoads(uri, experiment, root)
    cpu: dict[str, list[float]] = {"cold": [], "histories": [], "search_runs": []}
    variants = {
        "cold": _with_cpu(cold.load, cpu["cold"]),
        "histories": _with_cpu(cold.load_with_histories, cpu["histories"]),
        "search_runs": _with_cpu(lambda: _search(uri, experiment_id), cpu["search_runs"]),
    }
    times = interleaved(variants, ROUNDS, settle={"cold": cold.settle, "histories": cold.settle})
    cold_s, full_s, search_s = (median(times[name]) for name in ("cold", "histories", "search_runs"))
    cold_cpu, full_cpu, search_cpu = (median(cpu[name]) for name in ("cold", "histories", "search_runs"))
    uncached, stats = timed(lambda: RunAnalytics(uri, cache_dir=None).load_experiment_runs(experiment), ROUNDS)
    points = stats.metric_points  # counted when asked: before runs are added below
    cache = root / "cache"
    first = RunAnalytics(uri, cache_dir=cache)
    first.load_experiment_runs(experiment)
    first.wait_for_cache()
    warm, _ = timed(lambda: RunAnalytics(uri, cache_dir=cache).load_experiment_runs(experiment), ROUNDS)
    analytics = RunAnalytics(uri, cache_dir=cache)
    rows = []
    if new_runs is not None:
        new_runs()
        refresh, refreshed = timed(lambda: analytics.load_experiment_runs(experiment))
        assert refreshed.reread == 100 and refreshed.runs == stats.runs + 100, refreshed
        analytics.wait_for_cache()
        rows.append((f"{label}: refresh after 100 new runs", f"{refresh:.3f} s", "target <= 0.5 s at 10k"))
    else:
        analytics.load_experiment_runs(experiment)
    summary, _ = timed(lambda: analytics.cross_fold_summary("val_dice"), 7)
    top, _ = timed(lambda: analytics.top_models("val_dice", 5), 7)

    frame = _search(uri, experiment_id)
    sample = list(frame["run_id"])[:HISTORY_SAMPLE]
    per_run, _ = timed(lambda: [client.get_metric_history(r, k) for r in sample for k in METRICS])
    histories = per_run / len(sample) * len(frame)
    rounds = f"median of {ROUNDS} interleaved rounds"
    return [
        (
            f"{label}: cold load (runs table, cache written in background)",
            f"{cold_s:.3f} s",
            f"{rounds}; {stats.runs} runs; CPU {cold_cpu:.2f} s",
        ),
        (
            f"{label}: cold load + first metrics query",
            f"{full_s:.3f} s",
            f"{rounds}; {points} points; CPU {full_cpu:.2f} s",
        ),
        (f"{label}: mlflow.search_runs alone (wide table only)", f"{search_s:.3f} s", f"CPU {search_cpu:.2f} s"),
        (
            f"{label}: search_runs / cold load",
            f"{search_s / cold_s:.1f}x",
            f"target >= 10x at 10k; CPU {search_cpu / cold_cpu:.1f}x",
        ),
        (f"{label}: cold load without a cache", f"{uncached:.3f} s", f"median of {ROUNDS}"),
        (f"{label}: warm load from cache", f"{warm:.3f} s", f"median of {ROUNDS}"),
        *rows,
        (f"{label}: cross_fold_summary", f"{summary * 1e3:.1f} ms", "target <= 50 ms"),
        (f"{label}: top_models(5)", f"{top * 1e3:.1f} ms", "target <= 50 ms"),
        (
            f"{label}: search_runs + get_metric_history per run",
            f"{search_s + histories:.1f} s",
            f"extrapolated from {len(sample)} runs x {len(METRICS)} metrics; "
            f"{(search_s + histories) / full_s:.0f}x cold load + first metrics query",
        ),
    ]


def _with_cpu(func, seconds: list[float]):
    def run():
        started = time.process_time()
        func()
        seconds.append(time.process_time() - started)

    return run


def _search(uri, experiment_id):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs([experiment_id], max_results=1_000_000)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="segtrack-bench-analytics-"))
    os.chdir(root)
    rows = []
    try:
        if os.environ.get("BENCH_STORE"):
            uri = os.environ["BENCH_STORE"]
            rows += bench_store(root, uri, os.environ.get("BENCH_EXPERIMENT", "bench"), "given store")
        for runs in [] if os.environ.get("BENCH_STORE") else SIZES:
            db = root / f"store-{runs}.db"
            uri = migrated_store(db)
            add_runs(db, runs)
            new = lambda db=db: add_runs(db, 100, seed=1, start_ms=1_800_000_000_000)  # noqa: E731
            rows += bench_store(root / str(runs), uri, "bench", f"{runs:>6} runs", new)
            print(f"done {runs}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report("reading runs back, 4 metrics x 20 epochs per run (python bench/bench_analytics.py)", rows)


if __name__ == "__main__":
    main()
