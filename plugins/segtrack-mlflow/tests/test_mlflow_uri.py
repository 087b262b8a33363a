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


@pytest.mark.parametrize("uri, message", [
    ("mlruns", "malformed or of an unknown kind"),
    ("localhost:5000", "malformed or of an unknown kind"),
    ("http://", "has no host"),
    ("file:./mlruns", "MLFLOW_ALLOW_FILE_STORE=true"),
])
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
