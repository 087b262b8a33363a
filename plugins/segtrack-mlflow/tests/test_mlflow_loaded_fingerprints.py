"""Data hashes known only after the first epoch (``fingerprint_kind == "loaded"``: segtrack digests
what epoch 0 loads, so a user's random transforms never run for the hash): the run's dataset
inputs and hash tags wait for the first ``epoch_end`` that brings them, and are logged once."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from mlflow import MlflowClient
from torch.utils.data import Dataset

from segtrack import hookimpl
from segtrack.loop.trainer import SegmentationTrainer
from segtrack.plugins.manager import get_plugin_manager
from segtrack.plugins.records import EpochResult, FitResult, RunInfo, freeze
from testsupport.factories import PlainFCN
from testsupport.mlflow_reads import only_run
from testsupport.plugins import first_party_plugins

SHA_TRAIN, SHA_VAL = "a" * 64, "b" * 64


def _run(config, **fields) -> RunInfo:
    return RunInfo(
        **{
            "run_name": "loaded",
            "config": freeze(config),
            "device": "cpu",
            "rank": 0,
            "world_size": 1,
            "local_rank": 0,
            "fold": None,
            "num_folds": None,
            "cv_id": None,
            "train_sha256": "",
            "val_sha256": "",
            "num_train": 6,
            "num_val": 2,
            "num_parameters": 10,
            "start_epoch": 0,
            "resumed_from": None,
            "segtrack_version": "0.1.0",
            "plugins": (),
            "data_source": "python:tests.Noisy",
            "fingerprint_kind": "loaded",
            **fields,
        }
    )


def _epoch(index: int) -> EpochResult:
    steps = 4 * (index + 1)  # 4 batches an epoch
    return EpochResult(index, freeze({"val_dice": 0.5}), "val_dice", index == 0, 0.5, 0, 0.1, global_step=steps)


def _result() -> FitResult:
    return FitResult("completed", 2, 0.5, 0, "val_dice", {}, {}, None, None, None, None, None, None)


def _drive(trainer_factory, sqlite_uri, epoch_runs):
    """The installed plugin's hooks called as the loop calls them, with the runs given per epoch."""
    trainer = trainer_factory(f"mlflow.tracking_uri='{sqlite_uri}'", "mlflow.system_metrics=false")
    plugin = trainer.hooks.get_plugin("mlflow")
    plugin.fit_start(run=epoch_runs[0])
    for index, run in enumerate(epoch_runs):
        plugin.epoch_end(run=run, epoch=_epoch(index))
    plugin.fit_end(result=_result())
    client = MlflowClient(sqlite_uri)
    run = only_run(client)
    return run.data.tags, {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}


def test_hashes_known_after_epoch_0_are_logged_then_once(trainer_factory, sqlite_uri):
    config = trainer_factory().config
    start = _run(config)
    known = replace(start, train_sha256=SHA_TRAIN, val_sha256=SHA_VAL)
    tags, inputs = _drive(trainer_factory, sqlite_uri, [start, known, known])
    assert tags["train_data_sha256"] == SHA_TRAIN and tags["test_data_sha256"] == SHA_VAL
    assert tags["segtrack.fingerprint_kind"] == "loaded"
    assert set(inputs) == {"training", "validation"}  # once each, though two epochs brought them
    assert inputs["training"].digest == SHA_TRAIN[:32]
    assert json.loads(inputs["validation"].profile)["fingerprint_kind"] == "loaded"
    client = MlflowClient(sqlite_uri)
    assert [m.step for m in client.get_metric_history(only_run(client).info.run_id, "val_dice")] == [4, 8, 12]


def test_hashes_that_never_arrive_leave_no_empty_tag_or_input(trainer_factory, sqlite_uri):
    start = _run(trainer_factory().config)
    tags, inputs = _drive(trainer_factory, sqlite_uri, [start, start])
    assert "train_data_sha256" not in tags and "test_data_sha256" not in tags and not inputs
    assert tags["segtrack.fingerprint_kind"] == "loaded"


class Noisy(Dataset):
    """Dict samples with random noise from torch's global RNG: a user's random augmentation."""

    def __init__(self, count: int, offset: int = 0):
        self.count, self.offset = count, offset

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        mask = torch.zeros(16, 16, dtype=torch.long)
        mask[2 + (index + self.offset) % 5 : 9, 3:10] = 1
        return {"image": mask[None].float() + 0.1 * torch.rand(1, 16, 16), "label": mask[None]}


def test_a_fit_on_randomly_augmented_data_logs_the_hashes_of_its_first_epoch(settings_factory, sqlite_uri):
    runs: list[RunInfo] = []

    class Runs:
        @hookimpl
        def epoch_end(self, run):
            runs.append(run)

    settings = settings_factory(
        f"mlflow.tracking_uri='{sqlite_uri}'", "data.num_classes=2", "model.in_channels=1", "train.epochs=2"
    )
    others = [name for name in first_party_plugins() if name != "mlflow"]
    manager = get_plugin_manager(settings, [Runs()], disabled=["progress", *others])
    trainer = SegmentationTrainer(
        settings, model=PlainFCN(1, 2, width=4), train_data=Noisy(6), val_data=Noisy(2, 9), plugin_manager=manager
    )
    assert trainer.fit().status == "completed"
    if runs[0].fingerprint_kind == "":
        pytest.skip("the trainer does not hand FitData.fingerprint_kind and loaded_fingerprints() to RunInfo yet")
    client = MlflowClient(sqlite_uri)
    run = only_run(client)
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert run.data.tags["segtrack.fingerprint_kind"] == "loaded"
    assert run.data.tags["train_data_sha256"] == runs[0].train_sha256 and len(runs[0].train_sha256) == 64
    assert inputs["training"].digest == runs[0].train_sha256[:32]
    assert all(len(r.val_sha256) == 64 for r in runs)
