"""segtrack-mlflow: MLflow experiment tracking for segtrack, spooled to disk and shipped in the
background. Importing this package does not import mlflow."""

from segtrack_mlflow.uri import DEFAULT_TRACKING_URI, resolve_tracking_uri

__all__ = ["DEFAULT_TRACKING_URI", "ExperimentTracker", "MlflowPlugin", "resolve_tracking_uri"]


def __getattr__(name: str):
    if name == "ExperimentTracker":
        from segtrack_mlflow.tracker import ExperimentTracker

        return ExperimentTracker
    if name == "MlflowPlugin":
        from segtrack_mlflow.plugin import MlflowPlugin

        return MlflowPlugin
    raise AttributeError(name)
