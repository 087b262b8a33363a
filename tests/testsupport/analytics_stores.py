"""Stores filled through MLflow's own client, and MLflow's own view of them to compare the
analytics tables with."""

from __future__ import annotations

import math


def populate(uri: str, experiment: str = "synthetic", runs: int = 6, parent: bool = True) -> list[str]:
    """Runs shaped like segtrack's: params, tags (fold, parent), 3 metrics x 4 steps, one NaN and
    one inf value; the last run stays RUNNING. Returns the run ids."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment)
    parent_id = client.create_run(experiment_id, run_name="cv-parent").info.run_id if parent else None
    ids = [parent_id] if parent_id else []
    for index in range(runs):
        tags = {"segtrack.fold": str(index % 3), "model": f"w{4 * (1 + index % 2)}"}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = client.create_run(experiment_id, run_name=f"run-{index}", start_time=1_700_000_000_000 + index, tags=tags)
        metrics = []
        for step in range(4):
            dice = 0.1 * index + 0.05 * step
            metrics += [
                Metric("val_dice", dice, 1_700_000_000_000 + step, step),
                Metric("val_loss", 1.0 - dice, 1_700_000_000_000 + step, step),
            ]
        metrics.append(Metric("odd", math.nan if index == 1 else (math.inf if index == 2 else float(index)), 5, 0))
        client.log_batch(
            run.info.run_id,
            metrics=metrics,
            params=[
                Param("model.width", str(4 * (1 + index % 2))),
                Param("train.lr", "0.01"),
                Param("nested/key", "x"),
            ],
            tags=[RunTag("note", f"n{index}")],
        )
        if index < runs - 1:
            client.set_terminated(run.info.run_id, "FINISHED", end_time=1_700_000_100_000 + index)
        ids.append(run.info.run_id)
    if parent_id:
        client.set_terminated(parent_id, "FINISHED")
    return ids


def mlflow_view(uri: str, experiment: str):
    """{run_id: (name, status, params, tags, latest metrics)} and {(run_id, key): [(step, value)]}."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs, histories = {}, {}
    for run in client.search_runs([experiment_id], max_results=50000):
        rid = run.info.run_id
        runs[rid] = (
            run.info.run_name,
            run.info.status,
            dict(run.data.params),
            dict(run.data.tags),
            dict(run.data.metrics),
        )
        for key in run.data.metrics:
            histories[(rid, key)] = sorted((m.step, m.value) for m in client.get_metric_history(rid, key))
    return runs, histories


def _restore(value: float) -> float:
    """MLflow's SQL stores clamp +-inf to the largest double; the analytics tables restore it."""
    return math.copysign(math.inf, value) if abs(value) >= 1.7976931348623157e308 else value


def same_float(a: float, b: float) -> bool:
    a, b = _restore(a), _restore(b)
    return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=1e-12)


def assert_matches_mlflow(analytics, uri: str, experiment: str) -> None:
    """The DuckDB tables hold exactly what MLflow's client reports for the same store."""
    runs, histories = mlflow_view(uri, experiment)
    table = {r["run_id"]: r for r in analytics.query("SELECT * FROM runs").to_pylist()}
    assert set(table) == set(runs)
    for rid, (name, status, params, tags, latest) in runs.items():
        row = table[rid]
        assert (row["run_name"], row["status"]) == (name, status)
        assert {k[7:]: v for k, v in row.items() if k.startswith("params.") and v is not None} == params
        assert {k[5:]: v for k, v in row.items() if k.startswith("tags.") and v is not None} == tags
        got = {k[8:]: v for k, v in row.items() if k.startswith("metrics.") and v is not None}
        assert got.keys() == latest.keys() and all(same_float(got[k], latest[k]) for k in latest), (got, latest)
        assert row["parent_run_id"] == tags.get("mlflow.parentRunId")
    points = analytics.query("SELECT run_id, key, step, value FROM metrics ORDER BY run_id, key, step").to_pylist()
    loaded: dict = {}
    for p in points:
        loaded.setdefault((p["run_id"], p["key"]), []).append((p["step"], p["value"]))
    assert loaded.keys() == histories.keys()
    for key, expected in histories.items():
        assert [s for s, _ in loaded[key]] == [s for s, _ in expected]
        assert all(same_float(a, b) for (_, a), (_, b) in zip(sorted(loaded[key]), expected)), key


def populate_study(uri: str, experiment: str = "segtrack", direction: str = "minimize") -> dict[str, str]:
    """Runs tagged as segtrack-mlflow tags them: a CV (parent and 2 folds) and a study whose parent
    has 4 trials (completed, pruned, failed, and a CV trial with 2 folds), each with
    ``best_val_dice`` and a 2-epoch ``val_dice`` curve. Returns run ids by name."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment)
    ids: dict[str, str] = {}

    def run(name: str, parent: str | None, tags: dict[str, str], dice: float | None = None, **metrics: float) -> str:
        if parent:
            tags = {**tags, "mlflow.parentRunId": ids[parent]}
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        points = [Metric(key, value, 1_700_000_000_000, 0) for key, value in metrics.items()]
        if dice is not None:
            points.append(Metric("best_val_dice", dice, 1_700_000_000_000, 0))
            for epoch in (1, 2):  # per epoch at the global step, with "epoch" beside it
                points += [Metric("val_dice", dice * epoch / 2, 0, 10 * epoch), Metric("epoch", epoch, 0, 10 * epoch)]
        client.log_batch(run_id, metrics=points)
        client.set_terminated(run_id, "FINISHED")
        ids[name] = run_id
        return run_id

    run("cv-parent", None, {"segtrack.role": "cv-parent", "segtrack.cv_id": "cv1"})
    for fold, dice in ((1, 0.5), (2, 0.7)):
        run(f"cv-fold{fold}", "cv-parent", {"segtrack.fold": str(fold), "segtrack.cv_id": "cv1"}, dice)
    study = {"segtrack.study": "s1", "segtrack.study_id": "sid1"}
    parent = run("study-parent", None, {"segtrack.role": "study-parent", **study}, None, study_best_trial=1.0)
    client.log_batch(parent, params=[Param("study.direction", direction), Param("study.objective", "val_loss")])
    trials = [(0, "completed", 0.30), (1, "completed", 0.20), (2, "pruned", 0.10), (3, "failed", None)]
    for number, state, value in trials:
        tags = {**study, "segtrack.trial": str(number), "segtrack.trial_state": state}
        extra = {} if value is None else {"trial_value": value}
        run(f"trial-{number}", "study-parent", tags, 0.6 - number / 10, **extra)
    cv_trial = {**study, "segtrack.trial": "4", "segtrack.trial_state": "completed"}
    run(
        "trial-4-cv",
        "study-parent",
        {**cv_trial, "segtrack.role": "cv-parent", "segtrack.cv_id": "cv2"},
        None,
        trial_value=0.2,
    )
    for fold, dice in ((1, 0.4), (2, 0.6)):
        fold_tags = {**study, "segtrack.trial": "4", "segtrack.fold": str(fold), "segtrack.cv_id": "cv2"}
        run(f"trial-4-fold{fold}", "trial-4-cv", fold_tags, dice)
    client.set_tag(parent, "segtrack.best_trial", "1")
    return ids
