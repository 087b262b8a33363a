"""A new local store is created whole or not at all: a creator SIGKILLed mid-migration leaves no
half-migrated mlflow.db (the next creator makes it whole), and a store left half-made by another
tool is named in one sentence with the fix."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from segtrack import ConfigError

CREATE = "from segtrack_mlflow import store; store.client({uri!r}).search_experiments()"


def test_a_creator_killed_mid_migration_leaves_no_half_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    creator = subprocess.Popen([sys.executable, "-c", CREATE.format(uri=uri)], cwd=tmp_path)
    temporary = tmp_path / f"mlflow.db.creating-{creator.pid}"
    deadline = time.monotonic() + 120
    try:
        while not (temporary.exists() and temporary.stat().st_size > 0):  # migrating now
            assert creator.poll() is None and time.monotonic() < deadline, "the creator never began migrating"
            time.sleep(0.01)
        time.sleep(0.3)  # well inside the migration (seconds long)
    finally:
        creator.send_signal(signal.SIGKILL)
        creator.wait()
    assert not (tmp_path / "mlflow.db").exists()  # only the creator's own temporary file is left
    again = subprocess.run([sys.executable, "-c", CREATE.format(uri=uri)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # the dead creator's file removed
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1


def test_a_store_whose_creation_was_cut_short_is_named_with_the_fix(tmp_path):
    from segtrack_mlflow import store

    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # what a killed plain MLflow client leaves
        db.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY)")
    with pytest.raises(ConfigError) as refused:
        store.check_sqlite_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    said = str(refused.value)
    assert "creation was cut short" in said and "delete it and run again" in said and "\n" not in said
    assert os.path.getsize(tmp_path / "mlflow.db") > 0  # left as it is: the user decides
