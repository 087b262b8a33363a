"""MONAI's standard training recipe, unchanged: ``RandCropByPosNegLabeld(num_samples=N)`` makes each
item a list of N dicts of ``MetaTensor``s; batched by ``list_data_collate`` in a user's DataLoader,
or by segtrack from the Dataset itself. Runs only where MONAI is installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtrack import hookimpl
from segtrack.loop.trainer import SegmentationTrainer
from segtrack.plugins.manager import get_plugin_manager
from testsupport.factories import PlainFCN

monai = pytest.importorskip("monai")

CROPS, SIDE, PATCH = 4, 32, 16


def _inputs(count: int, seed: int) -> list[dict]:
    """In-memory inputs, channel-first, as a MONAI user's list of dicts: one box of class 1 each."""
    rng = np.random.default_rng(seed)
    inputs = []
    for _ in range(count):
        label = np.zeros((1, SIDE, SIDE), np.float32)
        y, x = rng.integers(0, SIDE - 8, size=2)
        label[0, y : y + 8, x : x + 8] = 1
        inputs.append({"image": (label + rng.normal(0, 0.1, label.shape)).astype(np.float32), "label": label})
    return inputs


def _datasets():
    from monai.data import Dataset
    from monai.transforms import Compose, EnsureTyped, RandCropByPosNegLabeld

    keys = ["image", "label"]
    train = Dataset(
        _inputs(6, seed=0),
        Compose(
            [
                EnsureTyped(keys=keys),
                RandCropByPosNegLabeld(
                    keys=keys, label_key="label", spatial_size=(PATCH, PATCH), pos=1, neg=1, num_samples=CROPS
                ),
            ]
        ),
    )
    val = Dataset(_inputs(2, seed=1), EnsureTyped(keys=keys))  # whole images
    return train, val


class Seen:
    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.types: set[type] = set()

    @hookimpl
    def train_batch_end(self, step):
        self.batch_sizes.append(step.batch_size)

    @hookimpl
    def validation_batch_end(self, batch):
        self.types |= {type(batch.images), type(batch.masks)}


def _fit(settings_factory, seen, train_data, val_data):
    settings = settings_factory("data.num_classes=2", "model.in_channels=1", "train.epochs=1", "train.batch_size=2")
    manager = get_plugin_manager(settings, [seen], autoload=False, disabled=["progress"])
    trainer = SegmentationTrainer(
        settings, model=PlainFCN(1, 2, width=4), train_data=train_data, val_data=val_data, plugin_manager=manager
    )
    return trainer, trainer.fit()


def test_rand_crop_by_pos_neg_label_with_list_data_collate_trains(settings_factory):
    from monai.data import DataLoader, list_data_collate

    train, val = _datasets()
    seen = Seen()
    loader = DataLoader(train, batch_size=2, shuffle=True, num_workers=0, collate_fn=list_data_collate)
    trainer, result = _fit(settings_factory, seen, loader, val)
    assert result.status == "completed" and np.isfinite(result.final_metrics["val_loss"])
    assert seen.batch_sizes == [2 * CROPS] * 3
    assert seen.types == {torch.Tensor}
    data = trainer.data.for_split(0.25)
    # MONAI keeps the inputs in .data: hashed as they are, the random crops never run for it
    assert data.fingerprint_kind == "inputs" and len(data.train_sha256) == 64 and len(data.val_sha256) == 64
    assert type(data.preview[0]) is torch.Tensor and data.preview[0].shape == (2, 1, SIDE, SIDE)


def test_the_monai_dataset_handed_to_segtrack_flattens_its_crops(settings_factory):
    train, val = _datasets()
    seen = Seen()
    _, result = _fit(settings_factory, seen, train, val)
    assert result.status == "completed"
    assert seen.batch_sizes == [2 * CROPS] * 3 and seen.types == {torch.Tensor}


def _weights_after(settings_factory, tmp_path, epochs: int, given: str, resume: bool = False, folder: str = "run"):
    """A fit of a MONAI crop pipeline (the Dataset itself, or in MONAI's DataLoader with workers) into
    ``tmp_path/folder``; its last weights."""
    from monai.data import DataLoader, list_data_collate

    train, val = _datasets()
    if given == "dataset":
        loader = train
    elif given == "loader-as-given":  # with val_data: the loader is used as it is, not split by segtrack
        loader = torch.utils.data.DataLoader(train, batch_size=2, shuffle=True, collate_fn=list_data_collate)
    else:
        loader = DataLoader(train, batch_size=2, shuffle=True, num_workers=2, collate_fn=list_data_collate)
    settings = settings_factory(
        "data.num_classes=2",
        "model.in_channels=1",
        f"train.epochs={epochs}",
        f"checkpoint.dir='{tmp_path / folder}'",
        "export.enabled=false",
    )
    manager = get_plugin_manager(settings, [], autoload=False, disabled=["progress"])
    torch.manual_seed(0)
    model = PlainFCN(1, 2, width=4)
    trainer = SegmentationTrainer(settings, model=model, train_data=loader, val_data=val, plugin_manager=manager)
    trainer.fit(resume="auto" if resume else None)
    return torch.load(tmp_path / folder / "last.pt", weights_only=True)["model"]


@pytest.mark.parametrize("given", ["dataset", "loader-with-workers", "loader-as-given"])
def test_monai_random_crops_are_seeded_per_sample_so_runs_agree_and_resume_is_exact(settings_factory, tmp_path, given):
    first = _weights_after(settings_factory, tmp_path, 2, given, folder="a")
    second = _weights_after(settings_factory, tmp_path, 2, given, folder="b")
    assert all(torch.equal(first[k], second[k]) for k in first)  # two runs, the same crops
    _weights_after(settings_factory, tmp_path, 1, given, folder="c")
    resumed = _weights_after(settings_factory, tmp_path, 2, given, resume=True, folder="c")
    assert all(torch.equal(first[k], resumed[k]) for k in first)  # 1 epoch + resume = 2 epochs


def test_each_epoch_draws_other_crops():
    from segtrack.data.plan import _training_view

    train, _ = _datasets()
    crops = [_training_view(train, epoch, seed=0)[0][0]["image"] for epoch in (0, 0, 1)]
    assert torch.equal(crops[0], crops[1]) and not torch.equal(crops[0], crops[2])
