"""Real MLflow stores for the plugin's tests: a migrated SQLite template copied per test, and
`mlflow server` processes (SQLite or PostgreSQL backend) started, killed and restarted by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mlflow_helpers import TINY, MlflowServer  # noqa: E402

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith(("SEGTRACK_", "MLFLOW_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """One migrated MLflow SQLite database per session (migrations take seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sqlite_uri(sqlite_template, tmp_path) -> str:
    target = tmp_path / "mlflow.db"
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


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


@pytest.fixture(scope="session")
def postgres_uri():
    """A fresh PostgreSQL database for the session, dropped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"segtrack_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(PG_DSN, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is needed for this test: {exc}")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()
