"""The mlflow plugin's suite: trainers load the installed mlflow plugin (the other first-party
plugins stay off) and fit TINY_MLFLOW settings. Stores, servers and the other shared fixtures come
from the test-support package (tests/testsupport, registered by the root conftest.py)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from testsupport.settings import TINY_MLFLOW


@pytest.fixture
def tiny_settings() -> Sequence[str]:
    return TINY_MLFLOW


@pytest.fixture
def plugins_under_test() -> Sequence[str]:
    return ("mlflow",)
