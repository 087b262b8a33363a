"""Tracking URI resolution: explicit > MLFLOW_TRACKING_URI > settings > sqlite:///mlflow.db."""

from __future__ import annotations

import pytest

from segtrack import ConfigError
from segtrack_mlflow import DEFAULT_TRACKING_URI, resolve_tracking_uri


def test_default_is_local_sqlite():
    assert resolve_tracking_uri() == DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"


def test_settings_beat_the_default(settings_factory):
    settings = settings_factory("mlflow.tracking_uri='sqlite:///from-settings.db'")
    assert resolve_tracking_uri(settings=settings) == "sqlite:///from-settings.db"


def test_segtrack_env_var_overrides_the_settings_file(settings_factory, monkeypatch):
    monkeypatch.setenv("SEGTRACK_MLFLOW__TRACKING_URI", "sqlite:///from-segtrack-env.db")
    settings = settings_factory()
    assert resolve_tracking_uri(settings=settings) == "sqlite:///from-segtrack-env.db"


def test_mlflow_env_var_beats_settings(settings_factory, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    settings = settings_factory("mlflow.tracking_uri='sqlite:///from-settings.db'")
    assert resolve_tracking_uri(settings=settings) == "sqlite:///from-env.db"


def test_explicit_beats_everything(settings_factory, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    settings = settings_factory("mlflow.tracking_uri='sqlite:///from-settings.db'")
    assert resolve_tracking_uri("http://127.0.0.1:5999", settings) == "http://127.0.0.1:5999"


@pytest.mark.parametrize(
    "uri, message",
    [
        ("mlruns", "malformed or of an unknown kind"),
        ("localhost:5000", "malformed or of an unknown kind"),
        ("http://", "has no host"),
        ("file:./mlruns", "MLFLOW_ALLOW_FILE_STORE=true"),
    ],
)
def test_bad_uris_are_explained(uri, message):
    with pytest.raises(ConfigError, match=message):
        resolve_tracking_uri(uri)


def test_file_store_allowed_when_the_user_opts_in(monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert resolve_tracking_uri("file:./mlruns") == "file:./mlruns"


def test_passwords_are_redacted_in_messages():
    with pytest.raises(ConfigError) as info:
        resolve_tracking_uri("ftp://user:hunter2@host/x")
    assert "hunter2" not in str(info.value) and "user:***@host" in str(info.value)


@pytest.mark.parametrize(
    "text, shown",
    [
        ("http://alice:hunter2@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000"),
        ("postgresql+psycopg2://app:p@ss/w:rd@db.local/mlflow", "postgresql+psycopg2://app:***@db.local/mlflow"),
        (
            "postgresql://app@db/mlflow?sslmode=require&password=hunter2",
            "postgresql://app@db/mlflow?sslmode=require&password=***",
        ),
        (
            "failed: Pool(url='http://u:hunter2@[::1]:9/api') and http://h:5000/x",
            "failed: Pool(url='http://u:***@[::1]:9/api') and http://h:5000/x",
        ),
        ("http://host:5000/api", "http://host:5000/api"),
        ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
    ],
)
def test_redact_masks_every_password_in_a_text(text, shown):
    from segtrack_mlflow.uri import redact

    assert redact(text) == shown


def test_credentials_come_out_of_the_uri_and_go_back_encoded():
    from segtrack_mlflow.uri import split_credentials, with_credentials

    assert split_credentials("http://alice:p%40ss@127.0.0.1:5000/") == ("http://127.0.0.1:5000/", "alice", "p@ss")
    assert split_credentials("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", "", "")
    assert with_credentials("postgresql://db/x", "app", "p@ss:/") == "postgresql://app:p%40ss%3A%2F@db/x"


def test_a_bad_port_is_explained_without_the_password():
    with pytest.raises(ConfigError, match="has an invalid port") as info:
        resolve_tracking_uri("http://alice:hun/ter2@127.0.0.1:5000")  # an unencoded / in the password
    assert "hun" not in str(info.value) and "ter2" not in str(info.value)


def test_server_credentials_leave_the_uri_for_mlflows_variables(monkeypatch):
    import os

    from segtrack_mlflow.store import Clients, connect_uri

    # a spool keeps the masked URI; the process that knows the real one sends with it
    assert Clients("http://alice:hunter2@h:5000").real == {"http://alice:***@h:5000": "http://alice:hunter2@h:5000"}
    assert connect_uri("http://alice:hunter2@127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "hunter2")
    # a spool's masked URI: the password comes from the environment (or mlflow.password)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-env")
    assert connect_uri("postgresql://app:***@db/mlflow") == "postgresql://app:from-env@db/mlflow"
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert connect_uri("postgresql://app:***@db/mlflow") == "postgresql://app@db/mlflow"  # PGPASSWORD, ~/.pgpass
