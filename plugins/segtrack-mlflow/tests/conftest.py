"""Real MLflow stores for the plugin's tests: a migrated SQLite template copied per test, and
`mlflow server` processes (SQLite or PostgreSQL backend) started, killed and restarted by PID."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mlflow_helpers import TINY, MlflowServer

from segtrack.testing import clean_env  # noqa: F401
from segtrack_mlflow.testing import postgres_uri, sqlite_template, sqlite_uri  # noqa: F401


@pytest.fixture
def settings_factory(tmp_path):
    from segtrack.config import load_settings

    def make(*overrides: str, env=None):
        return load_settings(None, env, [*TINY, *overrides], project_dir=tmp_path)

    return make


@pytest.fixture
def trainer_factory(settings_factory):
    """Trainer whose plugins come from the installed entry points (the mlflow plugin among them)."""
    from segtrack.plugins import get_plugin_manager
    from segtrack.trainer import SegmentationTrainer

    def make(*overrides: str, plugins=()):
        settings = settings_factory(*overrides)
        others = [n for n in ("analytics",) if _installed(n)]
        manager = get_plugin_manager(settings, plugins, disabled=["progress", *others])
        return SegmentationTrainer(settings, plugin_manager=manager)

    return make


def _installed(name: str) -> bool:
    from segtrack.plugins import installed_entry_points

    return name in installed_entry_points()


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory, sqlite_template):
    workdir = tmp_path_factory.mktemp("server")
    shutil.copy(sqlite_template, workdir / "mlflow.db")
    server = MlflowServer(f"sqlite:///{workdir / 'mlflow.db'}", workdir).start()
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path, sqlite_template):
    """A server only this test uses (it may kill and restart it)."""
    shutil.copy(sqlite_template, tmp_path / "server.db")
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path).start()
    yield server
    server.stop()
