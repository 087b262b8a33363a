"""Pytest fixtures for segtrack and plugin test suites (import them into a conftest.py).

Only test suites import this module; it needs pytest.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No SEGTRACK_/MLFLOW_ variable leaks in from the caller; each test works in its own folder."""
    for key in list(os.environ):
        if key.startswith(("SEGTRACK_", "MLFLOW_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
