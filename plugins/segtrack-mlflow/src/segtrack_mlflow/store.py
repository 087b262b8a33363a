"""The few MLflow calls segtrack makes, shared by the standalone tracker and the shipper."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

from segtrack import ConfigError
from segtrack_mlflow.uri import connect_uri, redact, use_credentials  # noqa: F401  (store.use_credentials: callers)

DEFAULT_REQUEST_TIMEOUT = "10"
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits
# names that differ in their first letters: MLflow's tag column cuts them short
VAL_SET_TAG = "val_data_sha256"  # the validation split's SHA256
# the same digest under its old, misleading name: kept for one release (0.x), then dropped
TEST_SET_TAG = "test_data_sha256"
TRAIN_SET_TAG = "train_data_sha256"
SPOOL_ID_TAG = "mlflow.segtrack.spoolId"  # internal: "mlflow." tags stay off the run page's tag list


def configure_http(request_timeout: float | None = None) -> None:
    """Short HTTP timeouts and no client-side retries (the shipper retries on its own schedule).

    MLflow reads these variables on every request; values a user set are kept.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(request_timeout or DEFAULT_REQUEST_TIMEOUT)))


def client(tracking_uri: str):
    import logging

    from mlflow import MlflowClient

    # a fresh SQLite store's migration lines would land between the epoch lines of the console
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    check_sqlite_store(tracking_uri)
    path = _sqlite_file(tracking_uri)
    if path is not None and is_new_sqlite_store(tracking_uri):
        create_sqlite_store(path.resolve())
    if path is not None:
        check_sqlite_openable(path)
    return MlflowClient(tracking_uri=connect_uri(tracking_uri))


def check_sqlite_openable(path: Path) -> None:
    """Raise sqlite3.OperationalError at once when the store's file cannot be opened (a folder in its
    place, no permission): MLflow retries that for ~100 s (ten attempts, doubling sleeps), during
    which a shipper sends nothing else; the shipper retries on its own schedule (<= 5 s apart)."""
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)) as db:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()


CREATING = ".creating-"  # <store>.creating-<pid>: a store being migrated, renamed into place when done


def create_sqlite_store(path: Path) -> None:
    """Create a new SQLite store atomically: MLflow migrates a temporary file beside ``path``, which
    is then renamed into place. A process killed meanwhile leaves only its temporary file (removed by
    the next creator), never a half-migrated store every later client fails on. Concurrent creators
    each migrate their own file; the first rename wins and the others discard theirs."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for stale in path.parent.glob(f"{path.name}{CREATING}*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            stale.unlink(missing_ok=True)  # its creator is gone
    temporary = path.with_name(f"{path.name}{CREATING}{os.getpid()}")
    temporary.unlink(missing_ok=True)
    try:
        store = SqlAlchemyStore(f"sqlite:///{temporary}", str(path.parent / "mlruns"))
        store.engine.dispose()
        if path.exists() and path.stat().st_size == 0:
            os.replace(temporary, path)  # an empty file the user created stands for a new store
        else:
            with contextlib.suppress(FileExistsError):  # another creator got there first: theirs is as good
                os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class Clients(dict):
    """Senders by the tracking URI a spool keeps (password masked), each made on first use: from
    the real URI when this process knows it (the fit that wrote the spool), else from the masked
    one and the credentials of the environment or settings. A tracking server gets the REST sender
    (no MLflow import); database and file stores MLflow's client."""

    def __init__(self, *real_uris: str):
        super().__init__()
        self.real = {redact(uri): uri for uri in real_uris}

    def __missing__(self, uri: str):
        real = connect_uri(self.real.get(uri, uri))
        if urlsplit(real).scheme in ("http", "https"):
            from segtrack_mlflow.sender_rest import RestSender

            self[uri] = RestSender(real)
        else:
            from segtrack_mlflow.sender_sdk import SdkSender

            self[uri] = SdkSender(self.real.get(uri, uri))
        return self[uri]


MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}


def _sqlite_file(uri: str) -> Path | None:
    """The database file of an SQLite store URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:///:memory:"):
        return None
    return Path(uri[len("sqlite:///") :].split("?")[0])


def is_new_sqlite_store(uri: str) -> bool:
    """Whether ``uri`` is an SQLite file MLflow has yet to create (missing or empty)."""
    path = _sqlite_file(uri)
    return path is not None and (not path.is_file() or path.stat().st_size == 0)


def check_sqlite_store(uri: str) -> None:
    """Refuse an SQLite file that is not an MLflow store: MLflow would add its tables to it.

    A missing or empty file, a database without tables, or one holding MLflow's tables pass.
    """
    path = _sqlite_file(uri)
    if path is None or is_new_sqlite_store(uri):
        return
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError:
        return  # locked or unreadable: MLflow's own error says which
    except sqlite3.DatabaseError as exc:
        why = f"cannot be read as SQLite ({exc})"
    else:
        if not tables or tables >= MLFLOW_TABLES:
            return
        if tables & (MLFLOW_TABLES - {"alembic_version"}) and "alembic_version" not in tables:
            raise ConfigError(
                f"tracking URI {redact(uri)!r} points at {str(path)!r}, an MLflow store whose creation was cut "
                f"short (a process was killed while it created it: MLflow's tables without their version): it "
                f"holds no run; delete it and run again (segtrack then creates it whole)"
            )
        why = f"holds other tables ({', '.join(sorted(tables)[:5])}{', ...' if len(tables) > 5 else ''})"
    raise ConfigError(
        f"tracking URI {redact(uri)!r} points at {str(path)!r}, which is not an MLflow store: it {why}; "
        f"use a new file (e.g. sqlite:///mlflow.db) or an existing MLflow store, so MLflow does not add "
        f"its tables to this database"
    )


def nearest_existing(path: Path) -> Path:
    """``path`` itself, or the closest folder above it that exists (where it would be created)."""
    return next((p for p in [path, *path.resolve().parents] if p.exists()), Path("/"))


def check_sqlite_writable(uri: str) -> None:
    """A local store this process can write: the file, or (a store still to create) its folder."""
    path = _sqlite_file(uri)
    if path is None:
        return
    path = path.resolve()
    target = nearest_existing(path)
    if not os.access(target, os.W_OK):
        what = f"the store {str(path)!r} is read-only" if target == path else f"{str(target)!r} is not writable"
        raise ConfigError(
            f"tracking URI {redact(uri)!r}: {what}, so no run could be recorded there; set mlflow.tracking_uri "
            f"to a store in a writable folder (e.g. sqlite:///mlflow.db in your project) or to a server"
        )


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(mlflow_client, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, creating it when missing (safe against a concurrent creator)."""
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        # a training experiment: MLflow's UI then shows it as "Model training" (Models, not Agent versions)
        return mlflow_client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_KIND)
    except MlflowException:
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_run_by_tag(mlflow_client, experiment_id: str, tag: str, value: str) -> str | None:
    runs = mlflow_client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=1)
    return runs[0].info.run_id if runs else None


REJECTED_CODES = (
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST",
    "INVALID_STATE",
)


def is_rejected(error: BaseException) -> bool:
    """The server answered and refused this request: retrying the same record cannot succeed.

    Everything else (connection refused, timeouts, 5xx, wrong credentials) is retried later, so
    a record is never dropped because a server was down or misconfigured for a while.
    """
    # MLflow's MlflowException and the REST sender's RestError both carry MLflow's error code
    return getattr(error, "error_code", "") in REJECTED_CODES


# a refusal that another client's concurrent write caused (two runs inserting one dataset at once):
# the same request passes once that write committed
CONCURRENCY_SIGNS = (
    "unique constraint",
    "duplicate key",
    "integrityerror",
    "database is locked",
    "deadlock",
    "could not serialize",
    "lock wait timeout",
)


def may_pass_on_retry(error: BaseException) -> bool:
    """A refusal (``is_rejected``) that a concurrent write caused, which a retry can get past."""
    text = str(error).lower()
    return any(sign in text for sign in CONCURRENCY_SIGNS)
