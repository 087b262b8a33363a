"""torchrun with two CPU processes (gloo): hooks on rank 0 only, checkpoints written once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import torch

from testsupport.ports import free_port

SCRIPT = textwrap.dedent("""
    import atexit, json, os, sys
    import torch.distributed as dist
    from segtrack import SegmentationTrainer, hookimpl, load_settings
    from segtrack.plugins.manager import get_plugin_manager

    class Log:
        @hookimpl
        def epoch_end(self, run, epoch):
            with open(f"hooks-rank{run.rank}.jsonl", "a") as fh:
                fh.write(json.dumps({"rank": run.rank, "world": run.world_size, "epoch": epoch.epoch,
                                     "val_dice": epoch.metrics["val_dice"]}) + "\\n")

    def record_group_at_exit():  # registered first, so it runs after segtrack's own exit handler
        with open(f"group-at-exit-rank{os.environ['RANK']}.txt", "w") as fh:
            fh.write(str(dist.is_initialized()))

    atexit.register(record_group_at_exit)
    settings = load_settings(overrides=sys.argv[1:])
    manager = get_plugin_manager(settings, [Log()], autoload=False, disabled=["progress"])
    result = SegmentationTrainer(settings, plugin_manager=manager).fit()
    with open(f"result-rank{os.environ['RANK']}.json", "w") as fh:
        json.dump({"status": result.status, "epochs": result.epochs_completed, "best": result.best_value}, fh)
""")


TWO_RANK_FIT = [
    "train.epochs=2",
    "train.batch_size=2",
    "data.image_size=16",
    "model.width=2",
    "model.depth=1",
    "export.enabled=false",
]


def _torchrun(folder, *args: str) -> subprocess.CompletedProcess:
    """``fit.py ARGS`` in ``folder`` under torchrun, two CPU ranks on loopback."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    return subprocess.run(
        [*launcher, "--master_port", str(free_port()), "fit.py", *args],
        cwd=folder,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_process_fit_fires_hooks_on_rank_zero_only(tmp_path):
    (tmp_path / "fit.py").write_text(SCRIPT)
    out = _torchrun(tmp_path, *TWO_RANK_FIT, "data.num_samples=12")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "hooks-rank0.jsonl").read_text().splitlines()]
    assert [(r["rank"], r["world"], r["epoch"]) for r in lines] == [(0, 2, 0), (0, 2, 1)]
    assert not (tmp_path / "hooks-rank1.jsonl").exists()
    results = [json.loads((tmp_path / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["status"] == "completed" and r["epochs"] == 2 for r in results)
    assert results[0]["best"] == results[1]["best"]  # metrics are reduced across ranks
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    # each rank leaves the process group before the interpreter tears down (else gloo may abort)
    assert [(tmp_path / f"group-at-exit-rank{r}.txt").read_text() for r in (0, 1)] == ["False", "False"]


STALL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
    from pathlib import Path
    from segtrack import SegmentationTrainer, hookimpl, load_settings
    from segtrack.plugins.manager import get_plugin_manager

    class Stall:  # hooks run on rank 0 only: it waits in epoch_end, outside any collective
        @hookimpl
        def epoch_end(self, run, epoch):
            Path("rank0-stalled").touch()
            time.sleep(120)

        @hookimpl
        def fit_exception(self, run, error):
            Path("error.txt").write_text(type(error).__name__)

        @hookimpl
        def fit_end(self, run, result):
            Path("status.txt").write_text(result.status)

    def die_when_rank0_stalls():
        while not Path("rank0-stalled").exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.environ["RANK"] == "1" and sys.argv[1] == "die":
        threading.Thread(target=die_when_rank0_stalls, daemon=True).start()
    settings = load_settings(overrides=sys.argv[2:])
    manager = get_plugin_manager(settings, [Stall()], autoload=False, disabled=["progress"])
    SegmentationTrainer(settings, plugin_manager=manager).fit()
""")


def _stalled_job(tmp_path, mode: str) -> subprocess.Popen:
    (tmp_path / "stall.py").write_text(STALL_SCRIPT)
    sets = [
        "train.epochs=2",
        "train.batch_size=2",
        "data.num_samples=12",
        "data.image_size=16",
        "model.width=2",
        "model.depth=1",
        "export.enabled=false",
    ]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "stall.py",
            mode,
            *sets,
        ],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_a_rank_that_died_makes_the_others_fail_not_interrupted(tmp_path):
    # rank 1 is SIGKILLed while rank 0 is outside any collective: rank 0 only learns of it from
    # torchrun's SIGTERM, the same signal a user's kill sends
    job = _stalled_job(tmp_path, "die")
    output = job.communicate(timeout=300)[0].decode()
    assert job.returncode != 0
    assert (tmp_path / "error.txt").read_text() == "PeerLost", output[-3000:]
    assert (tmp_path / "status.txt").read_text() == "failed"
    assert "rank 1 of this job died" in output


def test_stopping_the_job_interrupts_every_rank(tmp_path):
    job = _stalled_job(tmp_path, "live")
    deadline = time.monotonic() + 240
    while not (tmp_path / "rank0-stalled").exists():
        assert job.poll() is None and time.monotonic() < deadline, job.stdout.read().decode()[-3000:]
        time.sleep(0.1)
    job.send_signal(signal.SIGTERM)  # to torchrun, which passes it to the ranks
    output = job.communicate(timeout=300)[0].decode()
    assert job.returncode != 0
    assert (tmp_path / "error.txt").read_text() == "KeyboardInterrupt", output[-3000:]
    assert (tmp_path / "status.txt").read_text() == "interrupted"


METRIC_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from segtrack import SegmentationTrainer, hookimpl, load_settings
    from segtrack.plugins.manager import get_plugin_manager

    class ForegroundPixels:  # a plugin metric that needs every validation batch of every rank
        def __init__(self):
            self.count = 0

        @hookimpl
        def validation_batch_end(self, batch):
            self.count += int((batch.masks == 1).sum())

        @hookimpl
        def validation_metrics(self):
            value, self.count = self.count, 0
            return {"val_fg_pixels": float(value)}

    settings = load_settings(overrides=sys.argv[1:])
    manager = get_plugin_manager(settings, [ForegroundPixels()], autoload=False, disabled=["progress"])
    result = SegmentationTrainer(settings, plugin_manager=manager).fit()
    with open(f"metric-rank{os.environ.get('RANK', 'single')}.json", "w") as fh:
        json.dump({"status": result.status, "best": result.best_value, "best_epoch": result.best_epoch}, fh)
""")


def test_a_plugin_metric_under_torchrun_counts_every_rank_and_every_rank_agrees(tmp_path):
    (tmp_path / "fit.py").write_text(METRIC_SCRIPT)
    sets = [*TWO_RANK_FIT, "data.num_samples=14", "checkpoint.monitor=val_fg_pixels"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "fit.py", *sets], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr[-3000:]
    out = _torchrun(tmp_path, *sets, "checkpoint.dir=ddp")
    assert out.returncode == 0, out.stderr[-3000:]
    expected = json.loads((tmp_path / "metric-ranksingle.json").read_text())
    ranks = [json.loads((tmp_path / f"metric-rank{r}.json").read_text()) for r in (0, 1)]
    assert expected["best"] > 0
    assert all(r["status"] == "completed" and r["best"] == expected["best"] for r in ranks)
    assert ranks[0]["best_epoch"] == ranks[1]["best_epoch"]


OWN_LOOP_SCRIPT = textwrap.dedent("""
    import json, os
    import torch
    from segtrack import FitSession, hookimpl

    class Log:
        @hookimpl
        def epoch_end(self, trainer, run, epoch):
            with open(f"own-hooks-rank{run.rank}.jsonl", "a") as fh:
                fh.write(json.dumps({"rank": run.rank, "world": run.world_size, "epoch": epoch.epoch}) + "\\n")
            if epoch.epoch == 1:
                trainer.request_stop("enough")  # rank 0 only: every rank must stop with it

    model = torch.nn.Conv2d(1, 2, 3, padding=1)
    settings = {"plugins": {"autoload": False, "disabled": ["progress"]}}
    epochs = 0
    with FitSession(settings, [Log()], model=model) as fit:
        for epoch in range(fit.start_epoch, 6):
            epochs += 1
            fit.epoch_end(epoch, {"val_dice": 0.1 * epoch})
            if fit.should_stop:
                break
    with open(f"own-result-rank{os.environ['RANK']}.json", "w") as fh:
        json.dump({"status": fit.result.status, "epochs": epochs}, fh)
""")


def test_a_hand_loop_under_torchrun_fires_hooks_on_rank_zero_and_stops_every_rank(tmp_path):
    (tmp_path / "fit.py").write_text(OWN_LOOP_SCRIPT)
    out = _torchrun(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "own-hooks-rank0.jsonl").read_text().splitlines()]
    assert [(r["rank"], r["world"], r["epoch"]) for r in lines] == [(0, 2, 0), (0, 2, 1)]
    assert not (tmp_path / "own-hooks-rank1.jsonl").exists()
    results = [json.loads((tmp_path / f"own-result-rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["status"], r["epochs"]) for r in results] == [("stopped", 2), ("stopped", 2)]
