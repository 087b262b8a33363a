"""Shared fixtures: tiny settings, a hook recorder, and real (on-disk) fake distributions."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from recorder import TINY

from segtrack.testing import clean_env  # noqa: F401

SCENARIO_ROWS: list[dict] = []  # tests/reliability's report_row rows, printed at the end


def pytest_runtest_logreport(report):
    if report.when == "call":
        SCENARIO_ROWS.extend(row for key, row in report.user_properties if key == "reliability_row")


def pytest_terminal_summary(terminalreporter):
    if not SCENARIO_ROWS:
        return
    terminalreporter.section("reliability scenarios")
    columns = ["scenario", "runs", "faults", "expected", "found", "duplicates", "result"]
    for row in SCENARIO_ROWS:
        terminalreporter.write_line(" | ".join(f"{c}={row.get(c, '')}" for c in columns))


@pytest.fixture
def settings_factory(tmp_path):
    from segtrack.config import load_settings

    def make(*overrides: str, config_file=None, env=None):
        return load_settings(config_file, env, [*TINY, *overrides], project_dir=tmp_path)

    return make


@pytest.fixture
def trainer_factory(settings_factory):
    """A trainer with autoload off: installed plugins never leak into core tests."""
    from segtrack.plugins import get_plugin_manager
    from segtrack.trainer import SegmentationTrainer

    def make(*overrides: str, plugins=(), strict=None, builtins_off=True):
        settings = settings_factory(*overrides)
        disabled = ["progress"] if builtins_off else []
        manager = get_plugin_manager(settings, plugins, autoload=False, disabled=disabled, strict=strict)
        return SegmentationTrainer(settings, plugin_manager=manager)

    return make


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Write an installed distribution (dist-info + module) that declares a segtrack entry point."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def make(dist: str, entry_name: str, module: str, source: str, target: str | None = None):
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(f"[segtrack.plugins]\n{entry_name} = {target or module}\n")
        import importlib

        importlib.invalidate_caches()
        sys.modules.pop(module, None)
        return site

    return make
