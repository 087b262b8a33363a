"""Real MLflow stores for tests and benchmarks: a local `mlflow server` (small footprint, its own
process group, stopped by PID), migrated SQLite stores and throw-away PostgreSQL databases, and
pytest fixtures built on them (import them into a conftest.py). Never used at run time."""

from __future__ import annotations

import contextlib
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

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


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
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.workdir / "server-artifacts"),
        ]
        if self.app_name:
            cmd += ["--app-name", self.app_name]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "SEGTRACK_"))}
        env.update({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env})
        with open(self.workdir / f"server-{self.port}.log", "ab") as log:
            self.process = subprocess.Popen(
                cmd, cwd=self.workdir, env=env, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(self.workdir / f'server-{self.port}.log').read_text()[-2000:]}"
                )
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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None


def basic_auth_server(workdir: Path, backend_db: Path, admin_password: str) -> MlflowServer:
    """`mlflow server` with MLflow's basic-auth app (needs Flask-WTF): user ``admin`` with
    ``admin_password``, everyone else refused. ``backend_db`` is a migrated SQLite store."""
    config = workdir / "auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{workdir / 'auth-users.db'}\n"
        f"admin_username = admin\nadmin_password = {admin_password}\nauthorization_function = "
        "mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return MlflowServer(
        f"sqlite:///{backend_db}",
        workdir,
        app_name="basic-auth",
        env={"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test"},
    )


def migrated_sqlite_store(path: Path) -> str:
    """A new SQLite store with MLflow's migrations applied (they take seconds: do it once, copy it)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{path}"
    MlflowClient(uri).search_experiments()
    return uri


@contextlib.contextmanager
def temporary_postgres_database(prefix: str = "segtrack_test"):
    """Create a fresh database on the local PostgreSQL (trust auth) and drop it afterwards."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


# -- pytest fixtures -----------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # not a test run
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def sqlite_template(tmp_path_factory) -> Path:
        """One migrated SQLite store per session."""
        path = tmp_path_factory.mktemp("template") / "mlflow.db"
        migrated_sqlite_store(path)
        return path

    @pytest.fixture
    def sqlite_uri(sqlite_template, tmp_path) -> str:
        """A copy of the migrated store for this test."""
        shutil.copy(sqlite_template, tmp_path / "mlflow.db")
        return f"sqlite:///{tmp_path / 'mlflow.db'}"

    @pytest.fixture(scope="session")
    def postgres_uri():
        """A fresh PostgreSQL database for the session (PostgreSQL on 127.0.0.1:5432 is required)."""
        pytest.importorskip("psycopg2")
        with temporary_postgres_database() as uri:
            yield uri
