"""Reliability scenarios: real processes, real MLflow stores and servers. Each scenario records a
row (runs, faults, points expected/found, duplicates) printed at the end of the session."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
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


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sqlite_uri(sqlite_template, tmp_path) -> str:
    shutil.copy(sqlite_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
