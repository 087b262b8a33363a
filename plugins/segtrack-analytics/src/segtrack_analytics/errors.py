"""Why a tracking store cannot be read. All are ConfigErrors: the CLI prints one line, exits 2."""

from __future__ import annotations

from segtrack import ConfigError


class StoreError(ConfigError):
    """The store at the tracking URI cannot be read: not an MLflow store, or the read failed."""


class NoStore(StoreError):
    """Nothing at the tracking URI: no run was ever tracked there."""


class StoreUnreachable(StoreError):
    """The store's server does not answer; ``reason`` says so without the fix."""

    def __init__(self, store: str, cause: str, fix: str = "start it or pass another --tracking-uri"):
        self.reason = f"cannot reach {store} ({cause})"
        super().__init__(f"{self.reason}: {fix}")
