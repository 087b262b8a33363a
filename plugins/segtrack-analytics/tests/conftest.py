"""Real stores for the analytics tests: SQLite (migrated template), a server, PostgreSQL."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith(("SEGTRACK_", "MLFLOW_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


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


@pytest.fixture(scope="session")
def postgres_uri():
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"segtrack_analytics_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()
