"""The reliability suite's scenario table (a pytest plugin, registered by the root conftest.py).

A scenario records one row (runs, faults, points expected/found, duplicates) with ``report_row``;
the row rides on the test report, so rows from pytest-xdist workers reach the process that prints
the "reliability scenarios" section at the end of the session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

ROW_KEY = "reliability_row"
COLUMNS = ["scenario", "runs", "faults", "expected", "found", "duplicates", "result"]


@pytest.fixture
def report_row(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record one row of the scenario table."""

    def add(**row: Any) -> None:
        request.node.user_properties.append((ROW_KEY, row))

    return add


class ScenarioTable:
    """Gathers the rows of every finished test and prints them once, after the summary."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.rows.extend(row for key, row in report.user_properties if key == ROW_KEY)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.rows:
            return
        terminalreporter.section("reliability scenarios")
        for row in self.rows:
            terminalreporter.write_line(" | ".join(f"{c}={row.get(c, '')}" for c in COLUMNS))


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(ScenarioTable(), "segtrack-scenario-table")
