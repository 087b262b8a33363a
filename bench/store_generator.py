"""Fill a migrated MLflow SQLite store with runs shaped like segtrack's, fast (bulk SQL inserts).

How the store is made: MLflow's own client creates the database (``migrated_store``: MLflow runs
its migrations and creates the experiment), then ``add_runs`` inserts rows with plain SQL into
MLflow's tables (runs, params, tags, metrics, latest_metrics), columns as MLflow's schema has them.
MLflow's client does not write these runs (10,000 runs through it take ~20 minutes on 2 cores;
this takes ~25 s), but it reads them like any other.

Each run: 10 params, 5 tags (fold and model among them), 4 metrics x 20 epochs; every 5 runs
share a cross-validation parent.
"""

from __future__ import annotations

import random
import sqlite3
import uuid

METRICS = ("train_loss", "val_loss", "val_dice", "val_iou")
EPOCHS = 20


def migrated_store(path) -> str:
    from mlflow import MlflowClient

    uri = f"sqlite:///{path}"
    MlflowClient(uri).create_experiment("bench")
    return uri


def add_runs(path, count: int, seed: int = 0, start_ms: int = 1_700_000_000_000) -> list[str]:
    rng = random.Random(seed)
    con = sqlite3.connect(path)
    # 2 GB of page cache: random run ids spread every batch's index inserts over the whole file
    # (with SQLite's 2 MB, a batch of 10,000 runs took ~3x as long past 350,000 runs)
    con.execute("PRAGMA cache_size = -2000000")
    (experiment_id,) = con.execute("SELECT experiment_id FROM experiments WHERE name = 'bench'").fetchone()
    runs, params, tags, metrics, latest, ids = [], [], [], [], [], []
    parent = None
    for index in range(count):
        run_id = uuid.UUID(int=rng.getrandbits(128)).hex
        ids.append(run_id)
        begin = start_ms + index * 1000
        runs.append(
            (
                run_id,
                f"run-{seed}-{index}",
                "LOCAL",
                "bench",
                "",
                "bench",
                "FINISHED",
                begin,
                begin + 900,
                "",
                "active",
                f"file:///tmp/{run_id}",
                experiment_id,
            )
        )
        if index % 5 == 0:
            parent = run_id
        width = 8 * (1 + index % 4)
        for key, value in (
            ("model.width", width),
            ("model.depth", 2 + index % 3),
            ("train.lr", 0.001 * (1 + index % 5)),
            ("train.epochs", EPOCHS),
            ("train.batch_size", 8),
            ("train.seed", index),
            ("data.folds", 5),
            ("data.image_size", 64),
            ("checkpoint.monitor", "val_dice"),
            ("model.name", "unet"),
        ):
            params.append((key, str(value), run_id))
        for key, value in (
            ("segtrack.fold", str(index % 5)),
            ("model", f"unet-w{width}"),
            ("mlflow.runName", f"run-{index}"),
            ("mlflow.parentRunId", parent),
            ("data.test_sha256", f"{index % 5:064x}"),
        ):
            tags.append((key, value, run_id))
        base = rng.random() * 0.3
        for step in range(EPOCHS):
            values = {
                "train_loss": 1.5 - base - step * 0.05,
                "val_loss": 1.6 - base - step * 0.045,
                "val_dice": base + step * 0.03,
                "val_iou": base * 0.8 + step * 0.025,
            }
            for key, value in values.items():
                metrics.append((key, value, begin + step, run_id, step, 0))
        for key in METRICS:
            latest.append((key, metrics[-4 + METRICS.index(key)][1], begin + EPOCHS - 1, EPOCHS - 1, 0, run_id))
    with con:
        con.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
            "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            runs,
        )
        con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", params)
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)
        con.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)", metrics
        )
        con.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)", latest
        )
    con.close()
    return ids
