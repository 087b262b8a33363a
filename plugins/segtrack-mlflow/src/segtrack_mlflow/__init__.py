"""segtrack-mlflow: MLflow experiment tracking for segtrack, spooled to disk and shipped in the
background. Importing this package does not import mlflow."""

import os

from segtrack_mlflow.uri import DEFAULT_TRACKING_URI, resolve_tracking_uri

# MLflow 3 sends usage telemetry (a DNS lookup even for a local SQLite store) unless this is set
# before a client is built. Every MLflow client segtrack builds goes through this package (the
# plugin, `segtrack mlflow`, ExperimentTracker, segtrack-analytics), so it is set on import. A value
# the user set is kept; mlflow.telemetry = true lifts ours (see MlflowPlugin.settings_loaded).
TELEMETRY_OFF_BY_US = "MLFLOW_DISABLE_TELEMETRY" not in os.environ
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__all__ = ["DEFAULT_TRACKING_URI", "ExperimentTracker", "MlflowPlugin", "resolve_tracking_uri"]


def __getattr__(name: str):
    if name == "ExperimentTracker":
        from segtrack_mlflow.tracker import ExperimentTracker

        return ExperimentTracker
    if name == "MlflowPlugin":
        from segtrack_mlflow.plugin import MlflowPlugin

        return MlflowPlugin
    raise AttributeError(name)
