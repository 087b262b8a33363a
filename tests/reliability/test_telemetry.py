"""Scenario 7 (nothing leaves the machine unasked): every entry point that builds an MLflow client
switches MLflow's usage telemetry off before it can start (a user's own value is kept). Whole
commands run under ``strace -f -e trace=connect``, which also sees native DNS lookups."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testsupport.connections import traced, user_env
from testsupport.spools import run_records, write_spool

TRACKER = """
from segtrack_mlflow import ExperimentTracker
with ExperimentTracker("sqlite:///tracker.db", "telemetry") as tracker:
    tracker.start_run("one")
    tracker.log_epoch_metrics({"val_dice": 0.5}, 1)
"""


@pytest.mark.parametrize("entry_point", ["mlflow sync", "ExperimentTracker"])
def test_no_outside_connection_from_an_mlflow_client(entry_point, tmp_path, sqlite_uri, report_row):
    if entry_point == "mlflow sync":
        write_spool(tmp_path / ".segtrack" / "spool", sqlite_uri, run_records(3, "FINISHED"))
        command = [sys.executable, "-m", "segtrack", "mlflow", "sync", "--set", "plugins.disabled=['analytics']"]
    else:
        command = [sys.executable, "-c", TRACKER]
    out, outside = traced(
        command, tmp_path / "connect.log", cwd=tmp_path, env=user_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert outside == [], outside
    report_row(
        scenario=f"MLflow telemetry: `{entry_point}` under strace",
        runs=1,
        faults=0,
        expected="0 outside connects",
        found=f"{len(outside)} outside connects",
        duplicates="-",
        result="pass",
    )


@pytest.mark.parametrize("module", ["segtrack_mlflow.cli", "segtrack_mlflow.tracker", "segtrack_analytics.cli"])
@pytest.mark.parametrize("given, expected", [(None, "true"), ("false", "false")])
def test_the_switch_is_set_by_each_entry_point_unless_the_user_set_it(module, given, expected):
    env = user_env() if given is None else user_env(MLFLOW_DISABLE_TELEMETRY=given)
    code = f"import os, {module}; print(os.environ['MLFLOW_DISABLE_TELEMETRY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
