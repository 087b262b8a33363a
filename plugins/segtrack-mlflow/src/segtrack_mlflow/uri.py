"""Which MLflow tracking store to use: explicit > MLFLOW_TRACKING_URI > settings > local SQLite;
and URIs shown with their password masked. Plain string handling only (no mlflow import), shared
with segtrack-analytics, which reads the same store. The core knows nothing of MLflow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from segtrack import MASK, ConfigError, redact  # redact: also imported from here by this plugin's modules

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "file", "http", "https", "databricks")


def resolve_tracking_uri(explicit: str | None = None, settings: Any = None) -> str:
    """The tracking URI to use, by priority:

    1. ``explicit`` (a constructor or CLI argument);
    2. the ``MLFLOW_TRACKING_URI`` environment variable (MLflow's own convention);
    3. settings ``mlflow.tracking_uri`` (itself overridable with ``SEGTRACK_MLFLOW__TRACKING_URI``);
    4. ``sqlite:///mlflow.db`` in the working directory: no server needed.
    """
    for candidate in (explicit, os.environ.get("MLFLOW_TRACKING_URI"), _from_settings(settings)):
        if candidate:
            return check_uri(str(candidate))
    return DEFAULT_TRACKING_URI


def _from_settings(settings: Any) -> str | None:
    if settings is None:
        return None
    return (settings.get("mlflow") or {}).get("tracking_uri") or None


def check_uri(uri: str) -> str:
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme not in SCHEMES:
        raise ConfigError(
            f"tracking URI {redact(uri)!r} is malformed or of an unknown kind: use e.g. sqlite:///mlflow.db, "
            f"http://host:5000, postgresql://user@host/db or file:/path (with MLFLOW_ALLOW_FILE_STORE=true)"
        )
    if scheme in ("http", "https") and not urlsplit(uri).hostname:
        raise ConfigError(f"tracking URI {redact(uri)!r} has no host: write it as http://host:port")
    try:
        urlsplit(uri).port  # noqa: B018  (raises ValueError unless a number from 0 to 65535)
    except ValueError:
        raise ConfigError(
            f"tracking URI {redact(uri)!r} has an invalid port: write host:port with a port from "
            f"1 to 65535, and percent-encode any ':', '/' or '@' in a password (%3A, %2F, %40)"
        ) from None
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise ConfigError(
            f"tracking URI {redact(uri)!r} is MLflow's legacy file store, which MLflow 3 refuses: use "
            f"sqlite:///mlflow.db, or set MLFLOW_ALLOW_FILE_STORE=true to keep the file store"
        )
    return uri


def auth_header(username: str = "", password: str = "") -> str | None:
    """The Authorization header for a tracking server: basic auth from the arguments or
    MLFLOW_TRACKING_USERNAME/PASSWORD, else a bearer MLFLOW_TRACKING_TOKEN, else None."""
    import base64

    username = username or os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    password = password or os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if username:
        return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return f"Bearer {token}" if token else None


def is_remote(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https", "databricks")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def sends_from_this_machine(uri: str) -> bool:
    """Whether sending to ``uri`` costs this machine's CPU beyond a small HTTP client: a database
    store (MLflow's import, SQL work in the shipper) or a server on loopback (its request handling)."""
    if not is_remote(uri):
        return True
    return (urlsplit(uri).hostname or "") in LOOPBACK


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative SQLite or file-store path made absolute against the current folder.

    MLflow resolves a relative path whenever it connects: a shipper still sending after the
    caller changed folder would otherwise write into another folder's store."""
    parts = urlsplit(uri)
    if parts.scheme == "sqlite" and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path, query = uri[len("sqlite:///") :], f"?{parts.query}" if parts.query else ""
        path = path.split("?")[0]
        if path and path != ":memory:":
            return f"sqlite:///{Path(path).resolve()}{query}"
    if parts.scheme == "file" and not parts.netloc and parts.path and not parts.path.startswith("/"):
        return Path(parts.path).resolve().as_uri()
    return uri


def local_artifact_root(uri: str) -> str | None:
    """For a local SQLite store: ``mlartifacts/`` beside the database (MLflow would use ./mlruns)."""
    parts = urlsplit(uri)
    if parts.scheme != "sqlite":
        return None
    db = Path(uri[len("sqlite:///") :])
    return (db.resolve().parent / "mlartifacts").as_uri()


def split_credentials(uri: str) -> tuple[str, str, str]:
    """``(uri without user:password@, username, password)``, the last two percent-decoded ("" if absent)."""
    parts = urlsplit(uri)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return uri, "", ""
    username, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(username), unquote(password)


def with_credentials(uri: str, username: str, password: str) -> str:
    """``uri`` (without credentials) with ``user:password@`` put in, percent-encoded."""
    if not username and not password:
        return uri
    parts = urlsplit(uri)
    userinfo = quote(username, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


def use_credentials(username: str, password: str) -> None:
    """Basic auth for every MLflow request of this process (MLflow reads these on each request)."""
    if username:
        os.environ["MLFLOW_TRACKING_USERNAME"] = username
    if password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password


def connect_uri(uri: str) -> str:
    """The URI to connect with for ``uri``, as given or as a spool keeps it (password masked).

    A server's URI loses its ``user:password@`` (MLflow would print it in run links and errors):
    they become MLFLOW_TRACKING_USERNAME/PASSWORD, sent as basic auth by MLflow and by
    segtrack-analytics. A database URI keeps the credentials it names and gains none (a server's
    username and password are not the database's): a masked password comes from
    MLFLOW_TRACKING_PASSWORD, else from the driver's own sources (PGPASSWORD, ~/.pgpass).
    """
    bare, username, password = split_credentials(uri)
    masked = password == MASK
    password = "" if masked else password
    if is_remote(uri):
        if password:  # given with the URI: it wins
            use_credentials(username, password)
        elif username:
            os.environ.setdefault("MLFLOW_TRACKING_USERNAME", username)
        return bare
    if masked:
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    return with_credentials(bare, username, password)
