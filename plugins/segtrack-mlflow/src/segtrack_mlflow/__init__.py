"""segtrack-mlflow: MLflow experiment tracking for segtrack, spooled to disk and shipped in the
background. Importing this package does not import mlflow."""

import os

# MLflow 3 sends usage telemetry (a DNS lookup even for a local SQLite store) unless this is set
# before a client is built. Every MLflow client segtrack builds goes through this package (the
# plugin, `segtrack mlflow`, ExperimentTracker, segtrack-analytics), so it is set on import. A value
# the user set is kept; mlflow.telemetry = true lifts ours (see MlflowPlugin.settings_loaded).
TELEMETRY_OFF_BY_US = "MLFLOW_DISABLE_TELEMETRY" not in os.environ
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__all__ = ["DEFAULT_TRACKING_URI", "ExperimentTracker", "MlflowPlugin", "resolve_tracking_uri", "wait_sent"]


def wait_sent(spool_dir: str | os.PathLike = ".segtrack/spool", timeout: float = 60.0) -> bool:
    """Wait up to ``timeout`` seconds until every run spooled in ``spool_dir`` has reached MLflow
    (a fit returns before its shipper has sent the last records); True when all have.

    For a script that reads its runs back right after ``fit()``; `segtrack mlflow status` shows
    what is left, `segtrack mlflow sync` sends it from the command line."""
    import time
    from pathlib import Path

    from segtrack_mlflow.shipper_files import wake_all
    from segtrack_mlflow.spool import Spool, SpoolCorrupt

    deadline = time.monotonic() + timeout
    wake_all(Path(spool_dir))  # a shipper in its quiet start sends now: someone waits
    while True:
        left = []
        for folder in Spool.folders_in(Path(spool_dir)):
            try:
                if Spool(folder, writer=False).has_pending():
                    left.append(folder)
            except SpoolCorrupt:
                continue  # never sent as it is: `segtrack mlflow sync` says why
        if not left:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def __getattr__(name: str):  # imported on first use: a shipper's quiet start imports almost nothing
    if name in ("DEFAULT_TRACKING_URI", "resolve_tracking_uri"):
        from segtrack_mlflow import uri

        return getattr(uri, name)
    if name == "ExperimentTracker":
        from segtrack_mlflow.tracker import ExperimentTracker

        return ExperimentTracker
    if name == "MlflowPlugin":
        from segtrack_mlflow.plugin import MlflowPlugin

        return MlflowPlugin
    raise AttributeError(name)
