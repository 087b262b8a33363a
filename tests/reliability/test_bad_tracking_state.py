"""Scenario 6 (state on disk): a tracking store that is someone else's SQLite database, and spools
a crash or a disk left torn or corrupt. Through the CLI: one sentence naming the file, the line
and the fix, exit 2, no traceback, nothing written (`status` never writes; `sync` sends what it
can)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from testsupport.spools import run_records, write_spool

SETS = [
    "train.epochs=1",
    "data.num_samples=8",
    "data.image_size=16",
    "model.width=2",
    "model.depth=1",
    "plugins.disabled=['progress', 'analytics']",
]


def _segtrack(cwd, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "SEGTRACK_"))}
    out = subprocess.run(
        [sys.executable, "-m", "segtrack", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_sqlite_database_that_is_not_an_mlflow_store(tmp_path, report_row):
    with sqlite3.connect(tmp_path / "clinic.db") as db:
        db.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY, name TEXT)")
    db.close()
    before = _files(tmp_path)
    out = _segtrack(
        tmp_path, "train", *[a for s in [*SETS, "mlflow.tracking_uri='sqlite:///clinic.db'"] for a in ("--set", s)]
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.splitlines() == [
        "segtrack: error: tracking URI 'sqlite:///clinic.db' points at 'clinic.db', which is not an MLflow store: "
        "it holds other tables (patients); use a new file (e.g. sqlite:///mlflow.db) or an existing MLflow store, "
        "so MLflow does not add its tables to this database"
    ]
    assert _files(tmp_path) == before  # no MLflow table added, no spool, no checkpoint
    report_row(
        scenario="tracking URI at an SQLite database of another application",
        runs=0,
        faults=1,
        expected="exit 2, db untouched",
        found=f"exit {out.returncode}, db untouched",
        duplicates="-",
        result="pass",
    )


@pytest.mark.parametrize("damage", ["corrupt-middle", "corrupt-before-its-end", "torn-tail"])
def test_torn_and_corrupt_spools(tmp_path, sqlite_uri, damage, report_row):
    """A corrupt line: `status` names it; `sync` moves it to quarantined.jsonl beside the records,
    sends every valid record and gives the run a final status (FAILED when the spool holds none):
    no run stays RUNNING. A torn last line (a crash mid-write) is dropped, and the run that crash
    left without a final status is ended KILLED."""
    from segtrack_mlflow.spool import FIX

    records = run_records(10, "FINISHED" if damage == "corrupt-before-its-end" else None)
    if damage.startswith("corrupt"):  # a torn write followed by later records, or zeros a crash left
        records[4] = records[4][:25] + records[5]
        del records[5]
    else:
        records[-1] = records[-1][:25]
    folder = write_spool(tmp_path / ".segtrack" / "spool", sqlite_uri, records)
    before = _files(folder)

    status = _segtrack(tmp_path, "mlflow", "status", "--set", "plugins.disabled=['analytics']")
    assert _files(folder) == before  # status only reads
    sync = _segtrack(tmp_path, "mlflow", "sync", "--set", "plugins.disabled=['analytics']")
    from mlflow import MlflowClient

    client = MlflowClient(sqlite_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")]
    if damage.startswith("corrupt"):
        message = (
            f"segtrack: error: spool {folder.relative_to(tmp_path)}: line 5 of records.jsonl is corrupt "
            f"(Expecting ',' delimiter at column 28): {FIX}"
        )
        assert status.returncode == 2 and status.stderr.splitlines() == [message]
        assert sync.returncode == 0 and not sync.stderr, sync.stdout + sync.stderr
        said = [line for line in sync.stdout.splitlines() if "quarantined.jsonl" in line]
        assert len(said) == 1 and "moved corrupt line(s) 5 of records.jsonl" in said[0], sync.stdout
        assert ("marked FAILED" in said[0]) == (damage == "corrupt-middle")
        assert steps == [0, 1, 2, 5, 6, 7, 8, 9]  # every valid point, before and after the bad line
        assert run.info.status == ("FAILED" if damage == "corrupt-middle" else "FINISHED")
        assert run.data.tags["segtrack.spool_quarantined"] == "lines 5 in quarantined.jsonl"
        assert (folder / "quarantined.jsonl").read_bytes() == records[4]
        again = _segtrack(tmp_path, "mlflow", "status", "--set", "plugins.disabled=['analytics']")
        assert again.returncode == 0 and "all sent" in again.stdout, again.stdout + again.stderr
    else:
        assert status.returncode == 0 and "line 11 is cut short" in status.stdout and not status.stderr
        assert sync.returncode == 0 and "dropped line 11 of records.jsonl" in sync.stdout and not sync.stderr
        assert "was left RUNNING by a process that is gone: ended KILLED" in sync.stdout
        assert steps == list(range(9))
        # no process writes it and it has no final status: the crash is recorded; resuming the fit
        # from its checkpoint sets it RUNNING again and continues it
        assert run.info.status == "KILLED" and "stopped without ending it" in run.data.tags["segtrack.end_reason"]
    report_row(
        scenario=f"spool with a {damage.replace('-', ' ')} record: status, then sync",
        runs=1,
        faults=1,
        expected="status exit 2/0, unchanged; no ghost RUNNING run after a quarantine",
        found=f"status exit {status.returncode}, sync exit {sync.returncode}, {len(steps)} points sent, "
        f"run {run.info.status}",
        duplicates=0,
        result="pass",
    )
