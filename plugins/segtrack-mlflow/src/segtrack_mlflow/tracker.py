"""ExperimentTracker: the synchronous MLflow API of segtrack, usable without the trainer."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from segtrack_mlflow import store
from segtrack_mlflow.params import to_params
from segtrack_mlflow.uri import local_artifact_root, redact, resolve_tracking_uri


class ExperimentTracker:
    """Log one run at a time to any MLflow store, synchronously.

    :param tracking_uri: explicit URI; else ``MLFLOW_TRACKING_URI``, settings, ``sqlite:///mlflow.db``.
    :param experiment: experiment name, created when missing.
    :param settings: segtrack settings (for ``mlflow.tracking_uri``), optional.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = "segtrack", settings: Any = None):
        if not isinstance(experiment, str) or not experiment.strip():
            from segtrack import ConfigError

            raise ConfigError(f"experiment {experiment!r} is invalid: pass a non-empty experiment name")
        uri = resolve_tracking_uri(tracking_uri, settings)
        self.tracking_uri = redact(uri)  # shown; the client has the credentials
        self.experiment = experiment
        self.client = store.client(uri)
        self._artifact_root = local_artifact_root(uri)
        self.run_id: str | None = None

    def start_run(
        self, run_name: str | None = None, tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None
    ) -> str:
        experiment_id = store.ensure_experiment(self.client, self.experiment, self._artifact_root)
        all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(experiment_id, tags=all_tags, run_name=run_name)
        self.run_id = run.info.run_id
        return self.run_id

    def _active(self) -> str:
        if self.run_id is None:
            raise RuntimeError("no active run: call start_run() first")
        return self.run_id

    def log_epoch_metrics(self, metrics: Mapping[str, float], epoch: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self._active(), metrics=[Metric(k, float(v), now, int(epoch)) for k, v in metrics.items()]
        )

    def log_params(self, params: Mapping[str, Any], secret_keys: Iterable[str] = ()) -> dict[str, str]:
        """Flatten, drop secrets, truncate long values (full text saved as an artifact)."""
        from mlflow.entities import Param

        flat, overflow = to_params(params, secret_keys)
        items = [Param(k, v) for k, v in flat.items()]
        for start in range(0, len(items), store.MAX_PARAMS):
            self.client.log_batch(self._active(), params=items[start : start + store.MAX_PARAMS])
        for key, text in overflow.items():
            self.client.log_text(self._active(), text, f"params/{key}.txt")
        return flat

    def log_model_info(self, model_config: Mapping[str, Any]) -> dict[str, str]:
        return self.log_params({"model": dict(model_config)})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self._active(), str(path), artifact_path)

    def log_test_set_hash(self, sha256: str) -> None:
        self.client.set_tag(self._active(), store.TEST_SET_TAG, sha256)

    def end_run(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self._active(), status)
        self.run_id = None

    def __enter__(self) -> ExperimentTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self.run_id is not None:
            self.end_run("FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED"))
