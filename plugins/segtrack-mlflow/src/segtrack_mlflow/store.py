"""The few MLflow calls segtrack makes, shared by the standalone tracker and the shipper."""

from __future__ import annotations

import os
from typing import Any

DEFAULT_REQUEST_TIMEOUT = "10"
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits
TEST_SET_TAG = "data.test_sha256"


def configure_http(request_timeout: float | None = None) -> None:
    """Short HTTP timeouts and no client-side retries (the shipper retries on its own schedule).

    MLflow reads these variables on every request; values a user set are kept.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(request_timeout or DEFAULT_REQUEST_TIMEOUT)))


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(mlflow_client, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, creating it when missing (safe against a concurrent creator)."""
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_run_by_tag(mlflow_client, experiment_id: str, tag: str, value: str) -> str | None:
    runs = mlflow_client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=1)
    return runs[0].info.run_id if runs else None


REJECTED_CODES = ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
                  "INVALID_STATE")


def is_rejected(error: BaseException) -> bool:
    """The server answered and refused this request: retrying the same record cannot succeed.

    Everything else (connection refused, timeouts, 5xx, wrong credentials) is retried later, so
    a record is never dropped because a server was down or misconfigured for a while.
    """
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and getattr(error, "error_code", "") in REJECTED_CODES


def run_tags(tags: dict[str, Any]):
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]
