"""RunAnalytics over a real store: the original plan's T4 and T5, cache and refresh."""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from pathlib import Path

import pytest
from mlflow import MlflowClient

from segtrack import ConfigError
from segtrack_analytics import RunAnalytics
from testsupport.analytics_stores import populate
from testsupport.settings import TINY_ANALYTICS


@pytest.fixture
def cv_store(sqlite_uri):
    """A 2-fold CV of the real trainer with the mlflow and analytics plugins, run twice with two widths."""
    from segtrack.config.settings import load_settings
    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.plugins.manager import get_plugin_manager

    for width in (2, 4):
        settings = load_settings(
            overrides=[
                *TINY_ANALYTICS,
                f"mlflow.tracking_uri='{sqlite_uri}'",
                f"model.width={width}",
                f"run.name='w{width}'",
            ]
        )
        manager = get_plugin_manager(settings, disabled=["progress"])
        SegmentationTrainer(settings, plugin_manager=manager).cv(folds=2)
    return sqlite_uri


def test_load_query_summary_and_top_match_mlflow(cv_store):
    analytics = RunAnalytics(cv_store, cache_dir=None)
    stats = analytics.load_experiment_runs("segtrack")
    assert stats.runs == 6  # two parents, four folds
    client = MlflowClient(cv_store)
    experiment_id = client.get_experiment_by_name("segtrack").experiment_id
    children = client.search_runs([experiment_id], filter_string="tags.`segtrack.fold` != ''")
    by_parent: dict[str, list[float]] = {}
    for child in children:
        by_parent.setdefault(child.data.tags["mlflow.parentRunId"], []).append(child.data.metrics["best_val_dice"])

    summary = {r["parent_run_id"]: r for r in analytics.cross_fold_summary("best_val_dice").to_pylist()}
    assert summary.keys() == by_parent.keys()
    for parent, values in by_parent.items():
        row = summary[parent]
        assert row["folds"] == 2 and row["mean"] == pytest.approx(statistics.mean(values))
        assert row["std"] == pytest.approx(statistics.stdev(values))
        assert (row["min"], row["max"]) == (min(values), max(values))
    # CV parents are named <run.name>-<cv id>-cv (segtrack-mlflow)
    assert {re.sub(r"-[0-9a-f]{6}-cv$", "", r["cv_run"]) for r in summary.values()} == {"w2", "w4"}

    grouped = analytics.cross_fold_summary("best_val_dice", by=["params.model.width"]).to_pylist()
    assert {r["params.model.width"]: r["folds"] for r in grouped} == {"2": 2, "4": 2}

    best = sorted(children, key=lambda r: -r.data.metrics["best_val_dice"])[:3]
    top = analytics.top_models("best_val_dice", n=3)
    assert top.column("run_id").to_pylist() == [r.info.run_id for r in best]
    worst = analytics.top_models("val_loss", n=1, mode="min").column("metrics.val_loss").to_pylist()
    assert worst == [min(r.data.metrics["val_loss"] for r in children)]

    counts = analytics.query("SELECT count(*) AS n FROM metrics WHERE key = 'val_dice'").column("n").to_pylist()
    assert counts == [4 * 2]  # 4 folds x 2 epochs


def test_errors_name_the_columns(cv_store):
    analytics = RunAnalytics(cv_store, cache_dir=None)
    analytics.load_experiment_runs("segtrack")
    with pytest.raises(ConfigError, match=r"no column 'metrics.val_dize'.*did you mean metrics.val_dice"):
        analytics.top_models("val_dize")
    with pytest.raises(ConfigError, match=r"(?s)Referenced column .*nope.*runs columns: run_id"):
        analytics.query("SELECT nope FROM runs")
    with pytest.raises(ConfigError, match='use "max" or "min"'):
        analytics.top_models("val_dice", mode="best")


def test_queries_cannot_write_to_the_store_or_files(cv_store, tmp_path):
    db = Path(cv_store[len("sqlite:///") :])
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    analytics = RunAnalytics(cv_store, cache_dir=tmp_path / "cache")
    analytics.load_experiment_runs("segtrack")
    for sql in (f"COPY runs TO '{db}'", f"ATTACH '{db}' AS store", "SET enable_external_access = true"):
        with pytest.raises(ConfigError):
            analytics.query(sql)
    analytics.query("CREATE TABLE mine AS SELECT 1 AS x")  # its own in-memory tables are fine
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_incremental_refresh_new_updated_and_deleted_runs(sqlite_uri, tmp_path):
    ids = populate(sqlite_uri, runs=6)
    cache = tmp_path / "cache"
    first = RunAnalytics(sqlite_uri, cache_dir=cache).load_experiment_runs("synthetic")
    assert (first.from_cache, first.reread) == (False, 7)

    warm = RunAnalytics(sqlite_uri, cache_dir=cache)
    stats = warm.load_experiment_runs("synthetic")
    assert (stats.from_cache, stats.reread, stats.dropped) == (True, 1, 0)  # only the RUNNING run is re-read

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(sqlite_uri)
    running = ids[-1]
    client.log_batch(running, metrics=[Metric("val_dice", 0.99, 1_800_000_000_000, 4)])
    client.set_terminated(running, "FINISHED")
    client.delete_run(ids[1])
    new = client.create_run(client.get_experiment_by_name("synthetic").experiment_id, run_name="late").info.run_id
    client.log_metric(new, "val_dice", 0.5, step=0)
    client.set_terminated(new, "FINISHED")

    analytics = RunAnalytics(sqlite_uri, cache_dir=cache)
    stats = analytics.load_experiment_runs("synthetic")
    assert (stats.reread, stats.dropped, stats.runs) == (2, 1, 7)
    rows = {r["run_id"]: r for r in analytics.query('SELECT run_id, status, "metrics.val_dice" FROM runs').to_pylist()}
    assert ids[1] not in rows and rows[new]["metrics.val_dice"] == 0.5
    assert rows[running]["status"] == "FINISHED" and rows[running]["metrics.val_dice"] == 0.99
    steps = analytics.query(f"SELECT step FROM metrics WHERE run_id = '{running}' AND key = 'val_dice' ORDER BY step")
    assert steps.column("step").to_pylist() == [0, 1, 2, 3, 4]
    # the refreshed cache equals a full read
    full = RunAnalytics(sqlite_uri, cache_dir=None)
    full.load_experiment_runs("synthetic")
    sql = "SELECT run_id, key, step, CAST(value AS VARCHAR) AS v FROM metrics ORDER BY run_id, key, step, v"
    assert analytics.query(sql).to_pylist() == full.query(sql).to_pylist()


def test_corrupt_or_foreign_cache_is_rebuilt(sqlite_uri, tmp_path):
    populate(sqlite_uri)
    cache = tmp_path / "cache"
    first = RunAnalytics(sqlite_uri, cache_dir=cache)
    first.load_experiment_runs("synthetic")
    first.query("SELECT count(*) FROM metrics")  # histories are read (and cached) when first queried
    first.wait_for_cache()  # written in the background
    corrupted = list(cache.rglob("metrics*.arrow"))
    assert corrupted
    for arrow in corrupted:
        arrow.write_bytes(b"garbage")
    stats = RunAnalytics(sqlite_uri, cache_dir=cache).load_experiment_runs("synthetic")
    assert not stats.from_cache and stats.metric_points == 6 * 9
    state = next(cache.rglob("state.json"))
    state.write_text(json.dumps({**json.loads(state.read_text()), "version": 999}))
    assert not RunAnalytics(sqlite_uri, cache_dir=cache).load_experiment_runs("synthetic").from_cache


def test_missing_store_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="no MLflow store at .*nothing.db: train first"):
        RunAnalytics(f"sqlite:///{tmp_path / 'nothing.db'}").load_experiment_runs()


def test_new_runs_only_grow_the_cache_by_deltas_until_compaction(sqlite_uri, tmp_path):
    from mlflow import MlflowClient

    from segtrack_analytics.cache import MAX_DELTAS

    populate(sqlite_uri, runs=3)
    client = MlflowClient(sqlite_uri)
    experiment_id = client.get_experiment_by_name("synthetic").experiment_id
    client.set_terminated(client.search_runs([experiment_id], filter_string="status = 'RUNNING'")[0].info.run_id)
    cache = tmp_path / "cache"
    RunAnalytics(sqlite_uri, cache_dir=cache).load_experiment_runs("synthetic")
    for index in range(MAX_DELTAS + 2):
        run = client.create_run(experiment_id, run_name=f"new-{index}").info.run_id
        client.log_metric(run, "val_dice", index / 10, step=0)
        client.set_terminated(run)
        analytics = RunAnalytics(sqlite_uri, cache_dir=cache)
        stats = analytics.load_experiment_runs("synthetic")
        assert (stats.reread, stats.from_cache) == (1, True)
        analytics.wait_for_cache()
        state = json.loads(next(cache.rglob("state.json")).read_text())
        assert state["deltas"] == (index + 1) % (MAX_DELTAS + 1)
    cached = RunAnalytics(sqlite_uri, cache_dir=cache)
    cached.load_experiment_runs("synthetic")
    full = RunAnalytics(sqlite_uri, cache_dir=None)
    full.load_experiment_runs("synthetic")
    sql = 'SELECT run_id, "metrics.val_dice" AS v FROM runs ORDER BY run_id'
    assert cached.query(sql).to_pylist() == full.query(sql).to_pylist()


def test_a_renamed_run_is_read_again(sqlite_uri, tmp_path):
    ids = populate(sqlite_uri, runs=2)  # the cv parent, a finished run, a running one
    cache = tmp_path / "cache"
    RunAnalytics(sqlite_uri, cache_dir=cache).load_experiment_runs("synthetic")
    MlflowClient(sqlite_uri).update_run(ids[1], name="renamed")
    analytics = RunAnalytics(sqlite_uri, cache_dir=cache)
    assert analytics.load_experiment_runs("synthetic").reread == 2  # the renamed run and the running one
    rows = analytics.query(f"""SELECT run_name, "tags.mlflow.runName" AS tag FROM runs WHERE run_id = '{ids[1]}'""")
    assert rows.to_pylist() == [{"run_name": "renamed", "tag": "renamed"}]


def test_the_summary_never_takes_a_studys_trials_or_different_models_for_folds(sqlite_uri):
    client = MlflowClient(sqlite_uri)
    experiment = client.create_experiment("mixed")
    study = client.create_run(experiment, run_name="study", tags={"segtrack.role": "study-parent"}).info.run_id
    cv = client.create_run(experiment, run_name="cv", tags={"segtrack.role": "cv-parent"}).info.run_id
    rows = [  # (parent, tags, best_val_dice)
        (study, {"segtrack.trial": "0", "segtrack.model": "unet"}, 0.2),
        (study, {"segtrack.trial": "1", "segtrack.model": "unet"}, 0.4),
        (cv, {"segtrack.fold": "1", "segtrack.model": "monai.networks.nets.segresnet.SegResNet"}, 0.7),
        (cv, {"segtrack.fold": "2", "segtrack.model": "monai.networks.nets.segresnet.SegResNet"}, 0.9),
    ]
    for parent, tags, value in rows:
        run = client.create_run(experiment, tags={**tags, "mlflow.parentRunId": parent}).info.run_id
        client.log_metric(run, "best_val_dice", value)
        client.log_param(run, "model.width", "8")
    analytics = RunAnalytics(sqlite_uri, cache_dir=None)
    analytics.load_experiment_runs("mixed")
    summary = analytics.cross_fold_summary("best_val_dice").to_pylist()
    assert [(r["cv_run"], r["folds"]) for r in summary] == [("cv", 2)]  # the study's two trials are not folds
    grouped = analytics.cross_fold_summary("best_val_dice", by=["params.model.width"]).to_pylist()
    models = {r["tags.segtrack.model"]: (r["folds"], r["mean"]) for r in grouped}
    assert models == {
        "monai.networks.nets.segresnet.SegResNet": (2, pytest.approx(0.8)),
        "unet": (2, pytest.approx(0.3)),
    }
