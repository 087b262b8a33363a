"""Real MLflow stores and servers as fixtures (a pytest plugin, registered by the root conftest.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport.mlflow_server import MlflowServer
from testsupport.stores import migrated_sqlite_store, temporary_postgres_database


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite store per session (copy it; never write to it)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    migrated_sqlite_store(path)
    return path


@pytest.fixture
def sqlite_uri(sqlite_template: Path, tmp_path: Path) -> str:
    """A copy of the migrated store for this test."""
    shutil.copy(sqlite_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """A fresh PostgreSQL database for the session (PostgreSQL on 127.0.0.1:5432 is required)."""
    pytest.importorskip("psycopg2")
    with temporary_postgres_database() as uri:
        yield uri


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[MlflowServer]:
    """A server shared by the tests of one module (SQLite backend): tests must not stop it."""
    workdir = tmp_path_factory.mktemp("server")
    shutil.copy(sqlite_template, workdir / "mlflow.db")
    server = MlflowServer(f"sqlite:///{workdir / 'mlflow.db'}", workdir).start()
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path, sqlite_template: Path) -> Iterator[MlflowServer]:
    """A server only this test uses (it may kill and restart it)."""
    shutil.copy(sqlite_template, tmp_path / "server.db")
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path).start()
    yield server
    server.stop()
