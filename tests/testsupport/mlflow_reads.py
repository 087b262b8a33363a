"""What a fit logged, read back through MLflow's own client."""

from __future__ import annotations

from typing import Any


def only_run(client: Any, experiment: str = "segtrack", **filters: Any) -> Any:
    """The one run of ``experiment`` (matching ``filters``); fails when there are none or several."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], **filters)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def epochs_of(client: Any, run_id: str, key: str) -> list[int]:
    """The epochs (counted from 1) of ``key``'s points, sorted, repeats kept: segtrack logs every
    curve at the global step, with the ``epoch`` metric at the same steps."""
    epoch_at = {m.step: int(m.value) for m in client.get_metric_history(run_id, "epoch")}
    return sorted(epoch_at.get(m.step, -1) for m in client.get_metric_history(run_id, key))


def artifacts(client: Any, run_id: str, path: str | None = None) -> list[str]:
    found: list[str] = []
    for item in client.list_artifacts(run_id, path):
        found += artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(found)


def logged_settings(client: Any, run_id: str) -> dict[str, Any]:
    """The run's config.toml artifact (every resolved setting, plumbing included), parsed."""
    import tempfile
    import tomllib

    with (
        tempfile.TemporaryDirectory() as folder,
        open(client.download_artifacts(run_id, "config.toml", folder), "rb") as fh,
    ):
        return tomllib.load(fh)


def _as_param(value: Any) -> str:
    """A setting as MLflow keeps a param: text; booleans lower-case, lists bracketed."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_as_param(v) for v in value) + "]"
    return str(value)


def expected_params(config: dict, folds: int | None = None, share: float | None = None) -> dict[str, str]:
    """Every hyperparameter a run must log: the settings the fit ran with, flattened with dots,
    plumbing (plugins, mlflow, folders, workers, devices) and secrets left out; under CV the fold
    count it used and the share it validated on."""
    plumbing = ("plugins.", "mlflow.", "analytics.", "progress.", "sweep.", "export.dir", "checkpoint.dir")
    plumbing += ("checkpoint.keep",)
    plumbing += ("train.num_workers", "train.device", "infer.output_device")
    flat: dict[str, str] = {}

    def walk(node: dict, prefix: str = "") -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, f"{dotted}.")
            elif not dotted.startswith(plumbing):
                flat[dotted] = _as_param(value)

    walk(config)
    if folds is not None:
        flat["data.folds"] = str(folds)
        flat["data.val_fraction"] = str(round(share or 0.0, 4))
    return flat
