"""Scenarios: `segtrack sweep` workers as a cluster treats them. A worker SIGKILLed mid-trial (the
OOM killer, a lost node) and one SIGTERMed (preemption); three workers on one SQLite file, round
after round; three joiners extending a study at once. Each compares Optuna, MLflow and
`segtrack runs sweep`: exactly N trials that count, none left RUNNING, a dead trial run again from
its checkpoint into the same MLflow run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testsupport.mlflow_reads import epochs_of
from testsupport.settings import tiny

pytestmark = pytest.mark.slow  # minutes of worker processes: `make reliability`

SPACE = "sweep.space={'train.lr' = { low = 1e-3, high = 3e-2, log = true }, 'model.width' = [2, 4]}"
FAST_HEARTBEAT = ["sweep.heartbeat_s=1", "sweep.stale_after_s=4", "sweep.pruner='none'"]


def _args(study: str, trials: int, storage: str, uri: str, *extra: str, epochs: int = 2) -> list[str]:
    settings = [*tiny(epochs=epochs, num_samples=12, width=2), f"mlflow.tracking_uri='{uri}'"]
    settings += ["mlflow.drain_timeout=60", "mlflow.sample_overlays=0", "mlflow.checkpoint_policy='none'"]
    settings += [SPACE, "sweep.seed=3", *FAST_HEARTBEAT, *extra]
    sets = [a for s in settings for a in ("--set", s)]
    return ["sweep", "--study", study, "--trials", str(trials), "--storage", storage, *sets]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SEGTRACK_", "MLFLOW_"))}


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "segtrack.cli", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(workers: list[subprocess.Popen[str]], timeout: float = 400) -> list[tuple[int, str]]:
    """Each worker's exit code and output (stdout, then stderr); kills only these workers if stuck."""
    results = []
    try:
        for process in workers:
            out, err = process.communicate(timeout=timeout)
            results.append((process.returncode, out + err))
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def _wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _trials(storage: str, study: str) -> list:
    import optuna

    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def _mlflow_runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("segtrack")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def _counted(trials: list) -> list:
    return [t for t in trials if "segtrack.retried" not in t.user_attrs]


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    """The study's storage: a SQLite file beside the workers, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'optuna.db'}"
        return
    from testsupport.stores import temporary_postgres_database

    with temporary_postgres_database("segtrack_cluster") as url:
        yield url


def _runs_sweep(study: str, storage: str, cwd: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "segtrack.cli", "runs", "sweep", "--study", study, "--storage", storage],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.parametrize("kill", ["SIGKILL", "SIGTERM"])
def test_a_killed_or_preempted_worker_s_trial_runs_again_from_its_checkpoint(tmp_path, sqlite_uri, storage, kill):
    """Worker A is killed during trial 0's second epoch (its last.pt holds epoch 0); worker B,
    started after, runs the queued trials and the retry of trial 0, which resumes that last.pt and
    continues trial 0's MLflow run: 3 trials count, no run stays RUNNING, one curve without a
    repeated step."""
    args = _args("cluster", 3, storage, sqlite_uri, epochs=3)
    first = _start(args, tmp_path)
    _wait_for(tmp_path / "checkpoints" / "cluster" / "trial-0" / "last.pt", first)
    first.send_signal(getattr(signal, kill))
    killed_at = time.time()
    [(code, said)] = _finish([first], timeout=120)
    assert code == (-9 if kill == "SIGKILL" else 130), said[-2000:]
    if kill == "SIGTERM":  # preempted: the trial was queued again by the worker itself
        assert "Traceback" not in said, said[-3000:]
        mid = _trials(storage, "cluster")
        assert mid[0].state.name == "FAIL" and mid[0].user_attrs.get("segtrack.retried") == 3, said[-4000:]
    second = _start(args, tmp_path)
    [(code, said)] = _finish([second])
    assert code == 0 and "Traceback" not in said, said[-3000:]

    trials = _trials(storage, "cluster")
    states = {t.number: t.state.name for t in trials}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE", 3: "COMPLETE"}, states
    assert len(_counted(trials)) == 3
    first_attempt, retry = trials[0], trials[3]
    assert retry.user_attrs["segtrack.retry_of"] == 0 and retry.params == first_attempt.params
    reason = first_attempt.user_attrs["segtrack.error"]
    assert ("stopped answering" in reason) if kill == "SIGKILL" else reason.startswith("interrupted"), reason
    # failed and queued again in one step: at once when preempted, else once its heartbeat is stale
    # (sweep.stale_after_s = 4 here) and a worker starts or ends a trial
    requeued = first_attempt.datetime_complete.timestamp() - killed_at
    print(f"{kill}: trial 0 queued again as trial 3 {requeued:.1f} s after the signal")

    from mlflow import MlflowClient

    runs = _mlflow_runs(sqlite_uri)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    trial_runs = [r for r in runs if r.data.tags.get("segtrack.role") != "study-parent"]
    assert sorted(int(r.data.tags["segtrack.trial"]) for r in trial_runs) == [1, 2, 3]
    continued = next(r for r in trial_runs if r.data.tags["segtrack.trial"] == "3")
    assert continued.data.tags["segtrack.retry_of"] == "0" and continued.info.status == "FINISHED"
    client = MlflowClient(sqlite_uri)
    assert epochs_of(client, continued.info.run_id, "val_dice") == [1, 2, 3]  # one curve, no epoch twice
    assert retry.user_attrs["mlflow.run_id"] == continued.info.run_id
    parents = [r for r in runs if r.data.tags.get("segtrack.role") == "study-parent"]
    assert sorted(p.info.status for p in parents) == ["FINISHED", "KILLED"]
    assert len({p.data.tags["segtrack.study_id"] for p in parents}) == 1  # one study id for every worker

    table = _runs_sweep("cluster", storage, tmp_path)
    states_shown = [line.split()[2] for line in table.splitlines()[2:] if line.split() and line.split()[0].isdigit()]
    assert sorted(states_shown) == ["completed"] * 3 + ["failed"], table
    assert continued.info.run_name in table, table


def test_three_workers_on_one_sqlite_file_never_share_a_trial(tmp_path, sqlite_uri):
    """The default storage, a fresh file each round, three workers started at once: the schema
    and the study are created once, each trial runs in exactly one worker, no traceback."""
    for round_ in range(3):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        storage = f"sqlite:///{folder / 'optuna.db'}"
        args = _args("together", 6, storage, sqlite_uri, epochs=1)
        results = _finish([_start(args, folder) for _ in range(3)])
        for code, said in results:
            assert code == 0 and "Traceback" not in said, said[-3000:]
        trials = _trials(storage, "together")
        assert sorted(t.number for t in trials) == list(range(6))
        assert {t.state.name for t in trials} == {"COMPLETE"}
        ran = sum(
            int(line.split("ran ")[1].split(" trial")[0])
            for _, said in results
            for line in said.splitlines()
            if "this process ran" in line
        )
        assert ran == 6, [said for _, said in results]
    runs = [r for r in _mlflow_runs(sqlite_uri) if r.data.tags.get("segtrack.role") != "study-parent"]
    assert len(runs) == 18 and all(r.info.status == "FINISHED" for r in runs)


def test_three_joiners_extending_a_study_at_once_end_with_exactly_that_many(tmp_path, sqlite_uri, storage):
    [(code, said)] = _finish([_start(_args("grow", 2, storage, sqlite_uri, epochs=1), tmp_path)])
    assert code == 0, said[-3000:]
    results = _finish([_start(_args("grow", 5, storage, sqlite_uri, epochs=1), tmp_path) for _ in range(3)])
    for code, said in results:
        assert code == 0 and "Traceback" not in said, said[-3000:]
    trials = _trials(storage, "grow")
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert json.loads(json.dumps(trials[0].user_attrs.get("segtrack.worker", ""))) != ""


def test_concurrent_first_trials_on_a_fresh_experiment_all_keep_their_datasets(tmp_path, sqlite_template):
    """Three workers start their first trials together against a live server, each in a folder of
    its own (its own shipper): every trial run gets its train and validation inputs, and nothing is
    left in a rejected.jsonl (a refusal caused by the other workers' inserts is retried)."""
    import shutil

    from testsupport.mlflow_server import MlflowServer

    shutil.copy(sqlite_template, tmp_path / "server.db")
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path).start()
    try:
        storage = f"sqlite:///{tmp_path / 'optuna.db'}"
        args = _args("datasets", 3, storage, server.uri, "run.experiment='fresh'", epochs=1)
        folders = [tmp_path / f"worker{i}" for i in range(3)]
        for folder in folders:
            folder.mkdir()
        results = _finish([_start(args, folder) for folder in folders])
        for code, said in results:
            assert code == 0 and "Traceback" not in said, said[-3000:]
        from mlflow import MlflowClient

        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("fresh").experiment_id], max_results=100)
        trial_runs = [r for r in runs if r.data.tags.get("segtrack.role") != "study-parent"]
        assert len(trial_runs) == 3
        for run in trial_runs:
            contexts = sorted(
                tag.value for d in run.inputs.dataset_inputs for tag in d.tags if tag.key == "mlflow.data.context"
            )
            assert contexts == ["training", "validation"], (run.info.run_name, contexts)
        assert not list(tmp_path.glob("worker*/**/rejected.jsonl"))
    finally:
        server.stop()
