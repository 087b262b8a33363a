"""Send spooled records through MLflow's own client: for database URIs (a local SQLite store,
PostgreSQL), Databricks and the file store, where there is no REST API to talk to. Same methods as
``sender_rest.RestSender``; the shipper sees no difference."""

from __future__ import annotations

from typing import Any

from segtrack_mlflow import store


class SdkSender:
    def __init__(self, uri: str):
        self.mlflow_client = store.client(uri)

    def experiment_id(self, name: str, artifact_location: str | None = None) -> str:
        return store.ensure_experiment(self.mlflow_client, name, artifact_location)

    def find_run(self, experiment_id: str, tag: str, value: str) -> str | None:
        return store.find_run_by_tag(self.mlflow_client, experiment_id, tag, value)

    def create_run(self, experiment_id: str, start_time: int, tags: dict[str, str], run_name: str | None) -> str:
        run = self.mlflow_client.create_run(experiment_id, start_time=start_time, tags=tags, run_name=run_name)
        return run.info.run_id

    def log_batch(
        self, run_id: str, metrics: list[dict[str, Any]], params: dict[str, str], tags: dict[str, str]
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        self.mlflow_client.log_batch(
            run_id,
            metrics=[
                Metric(
                    m["key"],
                    m["value"],
                    m["timestamp"],
                    m["step"],
                    model_id=m.get("model_id"),
                    dataset_name=m.get("dataset_name"),
                    dataset_digest=m.get("dataset_digest"),
                )
                for m in metrics
            ],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
            synchronous=True,
        )

    def log_inputs(self, run_id: str, entries: list[dict[str, Any]]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        datasets = [
            DatasetInput(
                Dataset(e["name"], e["digest"], e["source_type"], e["source"], None, e["profile"]),
                [InputTag("mlflow.data.context", e["context"])],
            )
            for e in entries
        ]
        self.mlflow_client.log_inputs(run_id, datasets=datasets)

    def set_status(self, run_id: str, status: str, end_time: int | None = None) -> None:
        if status == "RUNNING":
            self.mlflow_client.update_run(run_id, status="RUNNING")
        else:
            self.mlflow_client.set_terminated(run_id, status, end_time=end_time)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None) -> None:
        self.mlflow_client.log_artifact(run_id, local_path, artifact_path)

    def close(self) -> None:
        pass
