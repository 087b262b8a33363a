"""Reliability scenarios: real processes, real MLflow stores and servers. Each scenario records a
row (runs, faults, points expected/found, duplicates) printed at the end of the session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from segtrack_mlflow.testing import sqlite_template, sqlite_uri  # noqa: E402,F401

REPORT: list[dict] = []


@pytest.fixture
def report_row():
    def add(**row):
        REPORT.append(row)

    return add


def pytest_terminal_summary(terminalreporter):
    if not REPORT:
        return
    terminalreporter.section("reliability scenarios")
    columns = ["scenario", "runs", "faults", "expected", "found", "duplicates", "result"]
    for row in REPORT:
        terminalreporter.write_line(" | ".join(f"{c}={row.get(c, '')}" for c in columns))
