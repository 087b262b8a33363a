"""A fit's train and validation data as MLflow dataset inputs (the run's Inputs, the Datasets
column). The digest is segtrack's SHA256 of every sample (MLflow's own hashes only the first
10,000 elements); the full SHA256 is in the dataset's profile and in the run's tags.

The SHA256s may be known only after the first epoch (``RunInfo.fingerprint_kind == "loaded"``:
segtrack digests what epoch 0 loads): until then the run's inputs and hash tags wait."""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

from segtrack_mlflow import store

DIGEST_LENGTH = 32  # MLflow stores at most 36 characters of a digest
FINGERPRINT_KIND_TAG = "segtrack.fingerprint_kind"


def fingerprints_known(run: Any) -> bool:
    """Whether ``run`` holds the data's SHA256s (always at ``fit_start``, except for kind
    "loaded", whose first ``epoch_end`` brings them)."""
    return bool(run.train_sha256 and run.val_sha256)


def fingerprint_tags(run: Any) -> dict[str, str]:
    """The hash tags of a run, and how the hashes were made; empty hashes are left out."""
    tags = {FINGERPRINT_KIND_TAG: run.fingerprint_kind} if run.fingerprint_kind else {}
    if fingerprints_known(run):
        sha = {store.VAL_SET_TAG: run.val_sha256, store.TEST_SET_TAG: run.val_sha256}
        tags.update({**sha, store.TRAIN_SET_TAG: run.train_sha256})
    return tags


def dataset_entries(run: Any) -> list[dict[str, Any]]:
    """The spooled form of a fit's two datasets: name, digest, source, profile, context."""
    kind, _, where = run.data_source.partition(":") if run.data_source else ("synthetic", "", "")
    if kind == "folder":
        name, source_type, source = PurePath(where).name or where, "local", {"uri": where}
    elif kind == "synthetic":
        data = run.config["data"]
        # 2D and 3D synthetic data are different datasets (the same settings make either)
        name, source_type = ("synthetic" if run.spatial_dims == 2 else f"synthetic-{run.spatial_dims}d"), "code"
        source = {
            "tags": {
                "segtrack.data": f"synthetic shapes, seed {run.config['train']['seed']}, "
                f"{data['num_samples']} samples of {data['image_size']} px"
            }
        }
    else:  # a dataset by name, a factory, or a Dataset passed in code
        name, source_type, source = (
            where.rsplit(".", 1)[-1].rsplit(":", 1)[-1],
            "code",
            {"tags": {"segtrack.data": run.data_source}},
        )
    fold = f"-fold{run.fold + 1}" if run.fold is not None else ""
    entries = []
    for context, sha, count in (
        ("training", run.train_sha256, run.num_train),
        ("validation", run.val_sha256, run.num_val),
    ):
        profile = {
            "num_samples": count,
            "sha256": sha,
            "fingerprint_kind": run.fingerprint_kind,
            "spatial_dims": run.spatial_dims,
            "num_classes": run.num_classes,
        }
        entries.append(
            {
                "name": f"{name}-{'train' if context == 'training' else 'val'}{fold}",
                "digest": sha[:DIGEST_LENGTH],
                "source_type": source_type,
                "source": json.dumps(source),
                "profile": json.dumps(profile),
                "context": context,
            }
        )
    return entries


def validation_dataset(run: Any) -> tuple[str, str] | None:
    """(name, digest) of the fit's validation dataset input, which the metrics a LoggedModel
    carries are linked to ("Datasets used"); None while its SHA256 is not known."""
    if not fingerprints_known(run):
        return None
    entry = next(e for e in dataset_entries(run) if e["context"] == "validation")
    return entry["name"], entry["digest"]
