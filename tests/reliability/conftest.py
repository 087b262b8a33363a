"""Reliability scenarios: real processes, real MLflow stores and servers. Each scenario records a
row (runs, faults, points expected/found, duplicates) printed at the end of the session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from segtrack_mlflow.testing import sqlite_template, sqlite_uri  # noqa: F401

ROW_KEY = "reliability_row"  # tests/conftest.py gathers these rows and prints the table


@pytest.fixture
def report_row(request):
    """Record one row of the scenario table; it rides on the test report, so rows from
    pytest-xdist workers reach the process that prints the table."""

    def add(**row):
        request.node.user_properties.append((ROW_KEY, row))

    return add
