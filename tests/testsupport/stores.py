"""Real MLflow stores for tests and benches: migrated SQLite stores and throw-away PostgreSQL
databases. PostgreSQL must run on 127.0.0.1:5432 with trust authentication for user ``postgres``
(README, Development); nothing here is used at run time."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
PG_ADMIN_DSN = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"


def migrated_sqlite_store(path: Path) -> str:
    """A new SQLite store with MLflow's migrations applied (they take seconds: do it once, copy it)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{path}"
    MlflowClient(uri).search_experiments()
    return uri


@contextlib.contextmanager
def temporary_postgres_database(prefix: str = "segtrack_test") -> Iterator[str]:
    """Create a fresh database on the local PostgreSQL and drop it afterwards; yields its SQLAlchemy URI."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()
