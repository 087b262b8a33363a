"""Opening a study's RDB storage, and the one lock its workers take to change what the study holds.

Several workers start on one storage at once (one process per GPU, an array job): they race to
create the schema, to create and queue the study, to extend it and to take a queued trial. On
PostgreSQL (and MySQL) Optuna's row locks make a claim safe and a database advisory lock serialises
the rest; SQLite ignores ``SELECT ... FOR UPDATE``, so there a file lock beside the database file
serialises all of it (SQLite is one machine's storage anyway).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segtrack import ConfigError, redact

LOCK_WAIT_S = 120.0  # a worker holds the lock for milliseconds; minutes mean a stuck storage
SQLITE_BUSY_TIMEOUT_S = 60  # SQLite's own wait for a writer's lock (Python's default: 5 s)


def default_storage() -> str:
    return f"sqlite:///{Path('optuna.db').resolve()}"


def storage_url(url: str) -> str:
    """SQLAlchemy 2 maps postgresql:// to psycopg 3; with only psycopg2 installed, say so in the URL."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for other storages (and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def open_storage(
    url: str,
    *,
    heartbeat_s: int | None = None,
    stale_after_s: int | None = None,
) -> Any:
    """Optuna's RDB storage for ``url``, with trial heartbeats when ``heartbeat_s`` is given; a
    storage that cannot be opened is one ConfigError naming why. Workers creating the schema of a
    fresh database at once take turns (SQLite) or retry (a server's database)."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    engine_kwargs: dict[str, Any] = {}
    if sqlite_file(url) is not None:
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    options: dict[str, Any] = {"engine_kwargs": engine_kwargs}
    if heartbeat_s:
        options.update(heartbeat_interval=heartbeat_s, grace_period=stale_after_s)
    for attempt in range(6):
        try:
            with _sqlite_lock(url), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
                return optuna.storages.RDBStorage(storage_url(url), **options)
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            if _schema_race(exc) and attempt < 5:
                time.sleep(0.5 * (attempt + 1))  # another process is creating the schema
                continue
            raise ConfigError(_cannot_open(url, exc)) from None
        except Exception as exc:  # unreachable server, unknown driver, a typo in the URL
            raise ConfigError(_cannot_open(url, exc)) from None
    raise AssertionError("unreachable")


def _schema_race(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(sign in text for sign in ("already exists", "duplicate", "unique constraint", "database is locked"))


def _cannot_open(url: str, exc: Exception) -> str:
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    lowered = text.lower()
    refused = ("password authentication failed", "access denied", "no password supplied", "authentication failed")
    if any(sign in lowered for sign in refused) or ("role" in lowered and "does not exist" in lowered):
        return (
            f"the Optuna storage {redact(url)} refused the credentials ({redact(reason)[:200]}): fix the user or "
            "password in --storage / sweep.storage (a password is best kept in .secrets.toml)"
        )
    return (
        f"cannot open the Optuna storage {redact(url)} ({redact(reason)[:300]}): give a reachable RDB URL "
        "with --storage or sweep.storage, e.g. sqlite:///optuna.db or postgresql://user@host/db"
    )


@contextlib.contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    """The file lock beside a SQLite database (created with it); nothing for other storages."""
    path = sqlite_file(url)
    if path is None:
        yield
        return
    if not path.parent.is_dir():
        raise ConfigError(
            f"the folder of the Optuna storage {url} does not exist: create {path.parent} or give another --storage"
        )
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"{path}.lock has been held for {LOCK_WAIT_S:.0f} s by another process: if no sweep "
                        "runs on this storage any more, delete that file"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def study_lock(storage: Any, url: str, study_name: str) -> Iterator[None]:
    """Hold the study's lock: a file lock for SQLite, an advisory lock of the database server for
    PostgreSQL and MySQL (held by a connection of its own, released when it closes)."""
    if sqlite_file(url) is not None:
        with _sqlite_lock(url):
            yield
        return
    dialect = storage.engine.dialect.name
    key = zlib.crc32(f"segtrack-study:{study_name}".encode())
    if dialect not in ("postgresql", "mysql", "mariadb"):
        yield  # no lock this storage offers: Optuna's row locks are what there is
        return
    with storage.engine.connect() as connection:
        from sqlalchemy import text

        if dialect == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        else:
            connection.execute(text("SELECT GET_LOCK(:key, :wait)"), {"key": str(key), "wait": int(LOCK_WAIT_S)})
        try:
            yield
        finally:
            if dialect == "postgresql":
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            else:
                connection.execute(text("SELECT RELEASE_LOCK(:key)"), {"key": str(key)})
            connection.commit()
