"""What MLflow tracking costs one fit of a user's small model through the Python API, in wall time
and in CPU seconds of every process it adds: tracking on (the mlflow plugin with its default
settings, a live `mlflow server` on 127.0.0.1) against tracking off, at 1,000 steps (20 epochs of 50
steps of a few ms) and at 100 steps (2 epochs), with torch's default threads (all cores, as users
run) and with one thread.

Each fit runs in a process of its own (``--fit``), which reports its wall time and the CPU seconds
of its process (every thread) and of its main thread over the fit (constructor to ``fit()``
returning). Beside it: the shipper process's CPU (sampled from /proc until it exits) and the
server's (its process group), from the fit's start until its run is sent. Variants alternate within
each round; the report gives medians. The fixed cost is the intercept of the overhead at the two
lengths: fixed = (o100 * 1000 - o1000 * 100) / 900, per step = (o1000 - o100) / 900.

``python bench/bench_tracking_fit.py [ROUNDS] [THREADS...]`` (default 5 rounds, threads "default 1").
With ``BENCH_BASELINE=/path/to/an/older/checkout`` a third variant runs tracking from that checkout's
sources, interleaved with the other two: before and after a change, side by side in one run.
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

from benchlib import ShipperWatch, group_cpu, median, paired_ratios, report  # first: it makes testsupport importable

STEPS_PER_EPOCH, BATCH, SIZE = 50, 4, 32
LENGTHS = {1000: 20, 100: 2}  # steps: epochs


def fit(workdir: Path, uri: str, epochs: int, tracked: bool) -> dict[str, float]:
    """One fit in this process; the wall and CPU seconds it took."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from segtrack import SegmentationTrainer, load_settings
    from segtrack.plugins.manager import get_plugin_manager

    def squares(count: int, seed: int) -> TensorDataset:
        generator = torch.Generator().manual_seed(seed)
        labels = (torch.rand(count, SIZE, SIZE, generator=generator) > 0.5).long()
        noise = 0.3 * torch.randn(count, 1, SIZE, SIZE, generator=generator)
        return TensorDataset(labels[:, None].float() + noise, labels)

    torch.manual_seed(0)
    train = DataLoader(squares(STEPS_PER_EPOCH * BATCH, 1), batch_size=BATCH, shuffle=True)
    val = DataLoader(squares(8, 2), batch_size=BATCH)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    started, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    settings = load_settings(
        overrides=[
            f"train.epochs={epochs}",
            "data.num_classes=2",
            "export.enabled=false",
            f"checkpoint.dir='{workdir}/ck'",
            f"mlflow.tracking_uri='{uri}'",
            f"mlflow.spool_dir='{workdir}/spool'",
        ]
    )
    disabled = ["progress", "analytics", "sweep"] + ([] if tracked else ["mlflow"])
    manager = get_plugin_manager(settings, disabled=disabled)
    SegmentationTrainer(settings, model=model, train_data=train, val_data=val, plugin_manager=manager).fit()
    return {
        "wall": time.perf_counter() - started,
        "training": time.process_time() - cpu,
        "main thread": time.thread_time() - main_cpu,
    }


def sources(tree: Path) -> str:
    """PYTHONPATH that runs segtrack and its plugins from the checkout ``tree``."""
    return os.pathsep.join([str(tree / "src"), *(str(p) for p in sorted((tree / "plugins").glob("*/src")))])


def run(workdir: Path, uri: str, threads: str, steps: int, tracked: str, server_pgid: int) -> dict[str, float]:
    """One fit in a process of its own (``tracked``: "off", "on", or "baseline": on, from the
    BENCH_BASELINE checkout); its figures, with the shipper's and the server's CPU until its run
    is sent and its shipper has exited."""
    import segtrack_mlflow

    env = {**os.environ}
    if tracked == "baseline":
        env["PYTHONPATH"] = sources(Path(os.environ["BENCH_BASELINE"]))
    env.pop("OMP_NUM_THREADS", None)
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    server, watch = group_cpu(server_pgid), ShipperWatch(workdir / "spool")
    out = subprocess.run(
        [sys.executable, __file__, "--fit", str(workdir), uri, str(LENGTHS[steps]), str(int(tracked != "off"))],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"the fit failed:\n{out.stderr[-3000:]}")
    if tracked != "off":
        assert segtrack_mlflow.wait_sent(workdir / "spool", 120), "the shipper did not send the run in 120 s"
        watch.wait_exited()
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return {**figures, "shipper": watch.stop(), "server": group_cpu(server_pgid) - server}


def main() -> None:
    from testsupport.mlflow_server import MlflowServer

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    thread_modes = sys.argv[2:] or ["default", "1"]
    workdir = Path(tempfile.mkdtemp(prefix="segtrack-bench-tracking-"))
    server = MlflowServer(f"sqlite:///{workdir / 'server.db'}", workdir).start()
    assert server.process is not None
    pgid = os.getpgid(server.process.pid)
    kinds = ["off", "on", *(["baseline"] if os.environ.get("BENCH_BASELINE") else [])]
    variants = [(threads, steps, tracked) for threads in thread_modes for steps in LENGTHS for tracked in kinds]
    measured: dict[tuple[str, int, str], list[dict[str, float]]] = {v: [] for v in variants}
    try:
        for kind in kinds[1:]:
            run(workdir, server.uri, "default", 100, kind, pgid)  # warm-up: file caches, the experiment
        for index in range(rounds):
            for variant in variants if index % 2 == 0 else variants[::-1]:
                measured[variant].append(run(workdir, server.uri, *variant, pgid))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def med(threads: str, steps: int, tracked: str, key: str) -> float:
        return median([m.get(key, 0.0) for m in measured[(threads, steps, tracked)]])

    rows = []
    for threads in thread_modes:
        for kind in kinds[1:]:
            overhead = {}
            for steps in LENGTHS:
                off, on = med(threads, steps, "off", "wall"), med(threads, steps, kind, "wall")
                overhead[steps] = on - off
                extra_cpu = {
                    "training process": med(threads, steps, kind, "training") - med(threads, steps, "off", "training"),
                    "  of which its main thread": med(threads, steps, kind, "main thread")
                    - med(threads, steps, "off", "main thread"),
                    "shipper process": med(threads, steps, kind, "shipper"),
                    "server": med(threads, steps, kind, "server") - med(threads, steps, "off", "server"),
                }
                total = sum(v for k, v in extra_cpu.items() if not k.startswith(" "))
                label = f"{threads} threads, {steps} steps, {kind}"
                pairs = paired_ratios(measured[(threads, steps, kind)], measured[(threads, steps, "off")])
                walls_off = sorted(m["wall"] for m in measured[(threads, steps, "off")])
                walls_on = sorted(m["wall"] for m in measured[(threads, steps, kind)])
                rows += [
                    (f"{label}: wall off / on", f"{off:.2f} s / {on:.2f} s", f"{on / off:.3f}x (target <= 1.05x)"),
                    (
                        f"{label}: wall on / off, median of the rounds' pairs",
                        f"{median(pairs):.3f}x",
                        f"(pairs {pairs[0]:.2f}-{pairs[-1]:.2f}x; off alone {walls_off[0]:.2f}-{walls_off[-1]:.2f} s)",
                    ),
                    (
                        f"{label}: wall on / off, fastest of the rounds",
                        f"{walls_on[0] / walls_off[0]:.3f}x",
                        f"({walls_off[0]:.2f} s / {walls_on[0]:.2f} s: the least disturbed of each)",
                    ),
                    (f"{label}: CPU training off", f"{med(threads, steps, 'off', 'training'):.2f} s", ""),
                ]
                rows += [(f"{label}: extra CPU, {name}", f"{value:+.2f} s", "") for name, value in extra_cpu.items()]
                rows.append((f"{label}: extra CPU, all processes", f"{total:+.2f} s", ""))
            fixed = (overhead[100] * 1000 - overhead[1000] * 100) / 900
            per_step = (overhead[1000] - overhead[100]) / 900
            rows += [
                (f"{threads} threads, {kind}: fixed wall cost per fit", f"{fixed * 1e3:.0f} ms", ""),
                (f"{threads} threads, {kind}: wall cost per step", f"{per_step * 1e6:.0f} us", ""),
            ]
    report(
        f"tracking on vs off, one trainer fit of a small user model through the Python API, {os.cpu_count()} cores, "
        f"median of {rounds} interleaved rounds (python bench/bench_tracking_fit.py {rounds} {' '.join(thread_modes)})",
        rows,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fit"]:
        workdir, uri, epochs, tracked = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
        print(json.dumps(fit(Path(workdir), uri, epochs, tracked)))
    else:
        main()
