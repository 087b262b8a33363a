"""Scenario 6 (state on disk): a tracking store that is someone else's SQLite database, and spools
a crash or a disk left torn or corrupt. Through the CLI: one sentence naming the file, the line
and the fix, exit 2, no traceback, nothing written (`status` never writes; `sync` sends what it
can)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

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


def _spool(root, uri: str, records: list[bytes]):
    folder = root / "20260101-000000-0badc0de"
    (folder / "files").mkdir(parents=True)
    (folder / "meta.json").write_text(
        json.dumps(
            {
                "tracking_uri": uri,
                "experiment": "segtrack",
                "run_name": "torn",
                "parent": None,
                "local_id": folder.name,
                "run_id": None,
            }
        )
    )
    (folder / "records.jsonl").write_bytes(b"".join(records))
    return folder


def _records(steps: int) -> list[bytes]:
    create = {
        "t": "create",
        "experiment": "segtrack",
        "run_name": "torn",
        "tags": {},
        "parent": None,
        "ts": 1_700_000_000_000,
        "artifact_location": None,
    }
    metrics = [{"t": "metric", "k": "val_dice", "v": s / 10, "s": s, "ts": 1_700_000_000_000 + s} for s in range(steps)]
    return [json.dumps(r).encode() + b"\n" for r in [create, *metrics]]


@pytest.mark.parametrize("damage", ["corrupt-middle", "torn-tail"])
def test_torn_and_corrupt_spools(tmp_path, sqlite_uri, damage, report_row):
    records = _records(10)
    if damage == "corrupt-middle":  # a torn write followed by later records, or zeros a crash left
        records[4] = records[4][:25] + records[5]
        del records[5]
    else:
        records[-1] = records[-1][:25]
    folder = _spool(tmp_path / ".segtrack" / "spool", sqlite_uri, records)
    before = _files(folder)

    status = _segtrack(tmp_path, "mlflow", "status", "--set", "plugins.disabled=['analytics']")
    assert _files(folder) == before  # status only reads
    sync = _segtrack(tmp_path, "mlflow", "sync", "--set", "plugins.disabled=['analytics']")
    from mlflow import MlflowClient

    client = MlflowClient(sqlite_uri)
    run = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id])[0]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")]
    if damage == "corrupt-middle":
        message = (
            f"segtrack: error: spool {folder.relative_to(tmp_path)}: line 5 of records.jsonl is corrupt "
            f"(Expecting ',' delimiter at column 28): move that line out of the file (it cannot be sent) "
            f"and run `segtrack mlflow sync` again"
        )
        assert status.returncode == 2 and status.stderr.splitlines() == [message]
        assert sync.returncode == 2 and sync.stderr.splitlines() == [message]
        assert steps == [0, 1, 2]  # everything before the corrupt line
    else:
        assert status.returncode == 0 and "line 11 is cut short" in status.stdout and not status.stderr
        assert sync.returncode == 0 and "dropped line 11 of records.jsonl" in sync.stdout and not sync.stderr
        assert steps == list(range(9)) and (folder / "records.jsonl").read_bytes().endswith(b"\n")
    report_row(
        scenario=f"spool with a {damage.replace('-', ' ')} record: status, then sync",
        runs=1,
        faults=1,
        expected="status exit 2/0, unchanged",
        found=f"status exit {status.returncode}, sync exit {sync.returncode}, {len(steps)} points sent",
        duplicates=0,
        result="pass",
    )
