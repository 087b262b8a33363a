"""Helpers for reading back what a fit logged."""

from __future__ import annotations

from segtrack import hookimpl
from segtrack_mlflow.testing import MlflowServer, free_port  # noqa: F401  (re-exported for tests)

TINY = [
    "train.epochs=3",
    "train.batch_size=4",
    "train.lr=0.01",
    "data.num_samples=16",
    "data.image_size=16",
    "model.width=4",
    "model.depth=1",
    "export.enabled=false",
    "mlflow.drain_timeout=60",
    "mlflow.log_every_n_steps=1",
]


def only_run(client, experiment="segtrack", **filters):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], **filters)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def artifacts(client, run_id, path=None):
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(found)


class RaiseAt:
    """Raises ``error`` from ``hook`` at epoch ``at`` (KeyboardInterrupt passes isolation)."""

    name = "raise_at"

    def __init__(self, at: int, error: BaseException, kind: str = "epoch_start"):
        self.at, self.error, self.kind = at, error, kind

    @hookimpl
    def epoch_start(self, epoch):
        if self.kind == "epoch_start" and epoch == self.at:
            raise self.error

    @hookimpl
    def checkpoint_saved(self, checkpoint):
        if self.kind == "checkpoint_best" and checkpoint.kind == "best" and checkpoint.epoch == self.at:
            raise self.error
