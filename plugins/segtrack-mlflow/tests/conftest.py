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
from mlflow_helpers import TINY  # noqa: E402

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` in its own process group; stop() ends that whole group, by its PID."""

    def __init__(self, backend_uri: str, workdir: Path, app_name: str | None = None, env: dict | None = None):
        self.backend_uri, self.workdir, self.app_name = backend_uri, workdir, app_name
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> MlflowServer:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", self.backend_uri,
               "--artifacts-destination", str(self.workdir / "server-artifacts")]
        if self.app_name:
            cmd += ["--app-name", self.app_name]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "SEGTRACK_"))}
        env.update({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env})
        log = open(self.workdir / f"server-{self.port}.log", "ab")
        self.process = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.workdir / f'server-{self.port}.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server on {self.uri} not ready after {timeout} s")

    def stop(self) -> None:
        """Kill the server's process group (only processes this fixture started)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self.process = None


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
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()
