"""MONAI-style data through the loop: dataset items that are lists of crops (dicts or pairs),
``list_data_collate``-shaped loaders, tensor subclasses with metadata; and fingerprints that never
run a dataset's transforms nor cost a pass of their own (kinds "arrays", "inputs", "loaded")."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from segtrack import DataError, hookimpl
from segtrack.data.batches import as_pair, crops_of, is_crop_list
from segtrack.data.digests import input_digest
from segtrack.data.plan import PREVIEW_SAMPLES, stream_seed
from segtrack.loop.trainer import SegmentationTrainer
from segtrack.plugins.manager import get_plugin_manager
from segtrack.plugins.records import RunInfo
from testsupport.factories import PlainFCN

TWO_CLASSES = ["data.num_classes=2", "model.in_channels=1", "train.epochs=1"]
SIDE, CROP = 16, 12


def _sample(index: int) -> tuple[np.ndarray, np.ndarray]:
    """A 16x16 image (1 channel) and its mask: a box of class 1 whose place depends on ``index``."""
    mask = np.zeros((SIDE, SIDE), np.int64)
    mask[2 + index % 5 : 8 + index % 5, 3 : 3 + 4 + index % 7] = 1
    noise = np.random.default_rng(index).normal(0, 0.1, mask.shape)
    return (mask + noise).astype(np.float32)[None], mask


def _crops(image: np.ndarray, mask: np.ndarray, count: int, form: str) -> list:
    """``count`` fixed CROPxCROP windows, as MONAI's dicts (channel-first label) or as pairs."""
    out = []
    for k in range(count):
        y, x = k % 5, (2 * k) % 5
        im = torch.from_numpy(image[:, y : y + CROP, x : x + CROP].copy())
        m = torch.from_numpy(mask[y : y + CROP, x : x + CROP].copy())
        out.append({"image": im, "label": m[None].float()} if form == "dict" else (im, m))
    return out


class CropLists(Dataset):
    """Each item a list of ``crops`` crops of one sample, as ``RandCropByPosNegLabeld(num_samples=N)``
    makes them; counts its ``__getitem__`` calls."""

    def __init__(self, count: int, crops: int = 3, form: str = "dict", offset: int = 0):
        self.count, self.crops, self.form, self.offset = count, crops, form, offset
        self.calls: collections.Counter[int] = collections.Counter()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> list:
        self.calls[index] += 1
        return _crops(*_sample(index + self.offset), self.crops, self.form)


def list_collate(items: list) -> dict:
    """The shape of MONAI's ``list_data_collate``: lists of crops flattened, then dicts stacked."""
    flat = [crop for item in items for crop in (item if isinstance(item, list) else [item])]
    return {key: torch.stack([crop[key] for crop in flat]) for key in flat[0]}


class Counting(Dataset):
    """Whole samples as dicts; with ``noisy``, random noise from the global RNGs (a user's random
    augmentation). Counts ``__getitem__`` calls."""

    def __init__(self, count: int, offset: int = 0, noisy: bool = False):
        self.count, self.offset, self.noisy = count, offset, noisy
        self.calls: collections.Counter[int] = collections.Counter()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        self.calls[index] += 1
        array, mask = _sample(index + self.offset)
        image = torch.from_numpy(array)
        if self.noisy:
            image = image + 0.1 * torch.rand(image.shape) + float(np.random.random())
        return {"image": image, "label": torch.from_numpy(mask)[None]}


class MetaLike(torch.Tensor):
    """Like MONAI's ``MetaTensor``: a tensor subclass with ``.meta`` and ``.affine``, whose type
    torch ops carry into their results (while the metadata itself does not follow)."""

    meta: dict

    @staticmethod
    def of(array: np.ndarray) -> MetaLike:
        tensor = torch.from_numpy(array).as_subclass(MetaLike)
        tensor.meta = {"affine": torch.eye(3)}
        return tensor

    @property
    def affine(self) -> torch.Tensor:
        return self.meta["affine"]


class MetaSamples(Dataset):
    def __init__(self, count: int, offset: int = 0):
        self.count, self.offset = count, offset

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        image, mask = _sample(index + self.offset)
        return {"image": MetaLike.of(image), "label": MetaLike.of(mask[None].astype(np.float32))}


class TensorTypes:
    """Records the types of the tensors plugins see in validation batches."""

    def __init__(self) -> None:
        self.types: set[type] = set()
        self.batch_sizes: list[int] = []

    @hookimpl
    def validation_batch_end(self, batch):
        self.types |= {type(batch.images), type(batch.masks), type(batch.logits)}

    @hookimpl
    def train_batch_end(self, step):
        self.batch_sizes.append(step.batch_size)


def _trainer(settings_factory, *overrides, plugins=(), **data):
    settings = settings_factory(*TWO_CLASSES, *overrides)
    manager = get_plugin_manager(settings, plugins, autoload=False, disabled=["progress"])
    return SegmentationTrainer(settings, model=PlainFCN(1, 2, width=4), plugin_manager=manager, **data)


def _fit_keeping_data(trainer, *fit_args):
    """Fit, and hand back the FitData the fit used (read from the trainer's data plan)."""
    kept = []
    for_split = trainer.data.for_split

    def keep(*args):
        kept.append(for_split(*args))
        return kept[-1]

    trainer.data.for_split = keep
    result = trainer.fit(*fit_args)
    return result, kept[0]


# -- sample forms ----------------------------------------------------------------------------------


def test_a_pair_is_one_sample_and_lists_of_dicts_or_pairs_are_crops():
    image, mask = (torch.from_numpy(a) for a in _sample(0))
    assert not is_crop_list((image, mask)) and not is_crop_list([image, mask]) and not is_crop_list([])
    assert is_crop_list([{"image": image, "label": mask}] * 2) and is_crop_list(((image, mask), (image, mask)))
    assert is_crop_list([(image.numpy(), mask.numpy())]) and crops_of((image, mask)) == [(image, mask)]
    with pytest.raises(DataError, match="2 crops where one sample was expected"):
        as_pair([(image, mask)] * 2, dims=2, batched=False, ignore_index=None)


def test_default_collate_of_crop_lists_gives_one_batch_of_every_crop():
    # default_collate turns B items of N crops into N batches of B: the loop joins them
    batch = torch.utils.data.default_collate([_crops(*_sample(i), 3, "dict") for i in range(2)])
    images, masks = as_pair(batch, dims=2, batched=True, ignore_index=None)
    assert images.shape == (6, 1, CROP, CROP) and masks.shape == (6, CROP, CROP) and masks.dtype == torch.int64
    pairs = torch.utils.data.default_collate([_crops(*_sample(i), 3, "pair") for i in range(2)])
    assert as_pair(pairs, dims=2, batched=True, ignore_index=None)[0].shape == (6, 1, CROP, CROP)


def test_tensor_subclasses_come_back_as_plain_tensors():
    image, mask = _sample(1)
    pair = as_pair(
        {"image": MetaLike.of(image), "label": MetaLike.of(mask[None].astype(np.float32))},
        dims=2,
        batched=False,
        ignore_index=None,
    )
    assert [type(t) for t in pair] == [torch.Tensor, torch.Tensor]
    assert torch.equal(pair[1], torch.from_numpy(mask))


# -- fits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["dict", "pair"])
def test_a_dataset_of_crop_lists_trains_with_every_crop_in_the_batch(settings_factory, form):
    train, val = CropLists(8, crops=3, form=form), CropLists(3, crops=2, form=form, offset=20)
    seen = TensorTypes()
    result = _trainer(settings_factory, "train.batch_size=2", plugins=[seen], train_data=train, val_data=val).fit()
    assert result.status == "completed"
    assert seen.batch_sizes == [6, 6, 6, 6]  # 2 items of 3 crops per batch
    assert seen.types == {torch.Tensor}


def test_a_list_data_collate_loader_and_the_same_dataset_handed_over_train_alike(settings_factory):
    batch_sizes = []
    for data in (
        {"train_data": DataLoader(CropLists(8, crops=4), batch_size=2, shuffle=True, collate_fn=list_collate)},
        {"train_data": CropLists(8, crops=4)},
    ):
        seen = TensorTypes()
        trainer = _trainer(settings_factory, "train.batch_size=2", "data.val_fraction=0.25", plugins=[seen], **data)
        result, fit_data = _fit_keeping_data(trainer)
        assert result.status == "completed" and fit_data.num_train == 6 and fit_data.num_val == 2
        assert len(fit_data.preview[0]) == PREVIEW_SAMPLES  # the first item's crops
        batch_sizes.append(seen.batch_sizes)
    assert batch_sizes == [[8, 8, 8]] * 2  # 2 items of 4 crops


def test_metadata_tensors_reach_plugins_previews_and_the_export_as_plain_tensors(settings_factory):
    seen = TensorTypes()
    trainer = _trainer(
        settings_factory,
        "export.enabled=true",
        "train.batch_size=3",
        plugins=[seen],
        train_data=DataLoader(MetaSamples(6), batch_size=3),
        val_data=MetaSamples(3, offset=10),
    )
    result, data = _fit_keeping_data(trainer)
    assert result.status == "completed" and result.export is not None and result.export.parity_ok
    assert seen.types == {torch.Tensor}
    assert type(data.preview[0]) is torch.Tensor and type(data.preview[1]) is torch.Tensor


# -- fingerprints ----------------------------------------------------------------------------------


def test_fingerprinting_costs_no_getitem_call(settings_factory):
    """Epoch 0 of a 1-epoch fit reads each training sample once, each validation sample three
    times: the preview, the preflight's first batch, the validation pass. Before, fingerprints
    read each sample once more (and ran its random transforms)."""
    for as_loaders in (False, True):
        train, val = Counting(8), Counting(4, offset=10)
        data = (
            {"train_data": DataLoader(train, batch_size=4, shuffle=True), "val_data": DataLoader(val, batch_size=4)}
            if as_loaders
            else {"train_data": train, "val_data": val}
        )
        result, fit_data = _fit_keeping_data(_trainer(settings_factory, "train.batch_size=4", **data))
        assert result.status == "completed" and fit_data.fingerprint_kind == "loaded"
        assert train.calls == {i: 1 for i in range(8)}
        assert val.calls == {i: 3 for i in range(4)}
        train_sha, val_sha = fit_data.loaded_fingerprints()
        assert len(train_sha) == 64 and len(val_sha) == 64 and train_sha != val_sha


def test_a_split_dataset_is_read_once_per_training_sample_too(settings_factory):
    dataset = Counting(8)
    result, fit_data = _fit_keeping_data(_trainer(settings_factory, "train.batch_size=4", train_data=dataset))
    assert result.status == "completed" and fit_data.fingerprint_kind == "loaded"
    validation = {i for i, n in dataset.calls.items() if n == 3}
    assert len(validation) == fit_data.num_val == 2  # preview, preflight, validation
    assert all(n == 1 for i, n in dataset.calls.items() if i not in validation) and len(dataset.calls) == 8
    assert all(fit_data.loaded_fingerprints())


def test_loaded_fingerprints_of_random_transforms_agree_between_two_runs_with_one_seed(settings_factory):
    digests = []
    for seed in (0, 0, 1):
        data = {"train_data": Counting(6, noisy=True), "val_data": Counting(3, offset=10, noisy=True)}
        trainer = _trainer(settings_factory, f"train.seed={seed}", "train.batch_size=3", **data)
        plan = trainer.data.for_split(0.25)
        assert (plan.train_sha256, plan.val_sha256) == ("", "") and plan.loaded_fingerprints() == ("", "")
        result, fit_data = _fit_keeping_data(trainer)
        assert result.status == "completed"
        digests.append(fit_data.loaded_fingerprints())
    assert all(all(d) for d in digests)
    assert digests[0] == digests[1]  # the same seed: the same random transforms, the same data
    assert digests[0][0] != digests[2][0]  # another seed: other random noise, other training data


def test_a_partial_validation_pass_or_a_later_epoch_digests_nothing(settings_factory):
    trainer = _trainer(settings_factory, "train.batch_size=2", train_data=Counting(4), val_data=Counting(4, offset=9))
    data = trainer.data.for_split(0.25)
    next(iter(data.val_batches()))  # the preflight's one batch
    list(data.train_batches(1))  # not epoch 0
    list(data.val_batches())  # validation before epoch 0 has trained
    assert data.loaded_fingerprints() == ("", "")
    list(data.train_batches(0))
    assert data.loaded_fingerprints() == ("", "")
    list(data.val_batches())
    first = data.loaded_fingerprints()
    assert all(first)
    list(data.train_batches(0))
    list(data.val_batches())
    assert data.loaded_fingerprints() == first  # the first complete passes count


class Stream(IterableDataset):
    def __init__(self, count: int, offset: int = 0):
        self.count, self.offset, self.passes = count, offset, 0

    def __iter__(self):
        self.passes += 1
        for index in range(self.count):
            image, mask = _sample(index + self.offset)
            yield torch.from_numpy(image), torch.from_numpy(mask)


def test_an_iterable_dataset_is_digested_as_it_trains_not_in_a_pass_of_its_own(settings_factory):
    train, val = Stream(8), Stream(4, offset=10)
    trainer = _trainer(
        settings_factory,
        train_data=DataLoader(train, batch_size=4),
        val_data=DataLoader(val, batch_size=4),
    )
    result, data = _fit_keeping_data(trainer)
    assert result.status == "completed" and data.fingerprint_kind == "loaded"
    assert train.passes == 1  # the epoch (before: one more, for the fingerprint)
    assert val.passes == 3  # the preview's first batch, the preflight's, the validation pass
    assert all(data.loaded_fingerprints())


class KeptInputs(Dataset):
    """MONAI-shaped: the inputs (dicts of .npy paths) in ``.data``, loaded and cropped in
    ``__getitem__`` with noise from the global RNG."""

    def __init__(self, inputs: list[dict]):
        self.data = inputs
        self.calls = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> list:
        self.calls += 1
        entry = self.data[index]
        image, mask = np.load(entry["image"]), np.load(entry["label"])
        image = image + np.float32(np.random.random())
        return _crops(image, mask, 2, "dict")


def _npy_inputs(folder, count: int, offset: int = 0) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    inputs = []
    for i in range(count):
        image, mask = _sample(i + offset)
        np.save(folder / f"img{i}.npy", image)
        np.save(folder / f"seg{i}.npy", mask)
        inputs.append({"image": str(folder / f"img{i}.npy"), "label": folder / f"seg{i}.npy", "id": i})
    return inputs


def test_kept_inputs_are_hashed_by_their_files_without_loading_them(settings_factory, tmp_path):
    train, val = KeptInputs(_npy_inputs(tmp_path / "a", 6)), KeptInputs(_npy_inputs(tmp_path / "v", 2, offset=9))
    moved = KeptInputs(_npy_inputs(tmp_path / "b", 6))  # the same files elsewhere
    trainer = _trainer(settings_factory, train_data=train, val_data=val)
    data = trainer.data.for_split(0.25)
    assert data.fingerprint_kind == "inputs" and len(data.train_sha256) == 64 and train.calls == 0
    assert data.loaded_fingerprints() == (data.train_sha256, data.val_sha256)
    assert _trainer(settings_factory, train_data=moved, val_data=val).data.for_split(0.25).train_sha256 == (
        data.train_sha256
    )
    np.save(moved.data[3]["label"], np.zeros((SIDE, SIDE), np.int64))
    assert _trainer(settings_factory, train_data=moved, val_data=val).data.for_split(0.25).train_sha256 != (
        data.train_sha256
    )
    assert trainer.fit().status == "completed" and train.calls == 6  # one epoch, nothing more


def test_input_digest_takes_arrays_by_type_and_refuses_objects(tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "1.dcm").write_bytes(b"slice")
    assert input_digest({"image": np.zeros(3, np.float32)}) != input_digest({"image": np.zeros(3, np.float64)})
    assert input_digest({"image": np.zeros((2, 3))}) != input_digest({"image": np.zeros((3, 2))})
    assert input_digest({"x": torch.zeros(2, dtype=torch.bfloat16)}) is not None
    assert input_digest({"image": str(tmp_path / "series")}) != input_digest({"image": "no/such/file"})
    assert input_digest({"image": object()}) is None and input_digest([np.array([object()])]) is None


def test_the_built_in_data_is_fingerprinted_as_arrays(trainer_factory):
    data = trainer_factory().data.for_split(0.25)
    assert data.fingerprint_kind == "arrays" and len(data.train_sha256) == 64
    assert data.loaded_fingerprints() == (data.train_sha256, data.val_sha256)


def test_stream_seeds_are_the_seeds_segtrack_always_used():
    for seed, epoch in ((0, 0), (7, 3), (123, 41)):
        base = seed * 100_003 + epoch
        assert [stream_seed(seed, epoch, s) for s in ("order", "flips", "train_rng")] == [base, base + 1, base + 2]


def test_run_info_says_how_the_data_was_fingerprinted():
    assert RunInfo.__dataclass_fields__["fingerprint_kind"].default == ""


class SeenRuns:
    def __init__(self) -> None:
        self.runs: list[tuple[str, RunInfo]] = []

    @hookimpl
    def fit_start(self, run):
        self.runs.append(("fit_start", run))

    @hookimpl
    def epoch_end(self, run):
        self.runs.append(("epoch_end", run))


def test_plugins_get_the_loaded_fingerprints_after_the_first_epoch(settings_factory):
    seen = SeenRuns()
    trainer = _trainer(
        settings_factory, "train.epochs=2", plugins=[seen], train_data=Counting(6), val_data=Counting(2, offset=9)
    )
    result, data = _fit_keeping_data(trainer)
    (_, start), (_, first), (_, second) = seen.runs
    if start.fingerprint_kind == "":
        pytest.skip("the trainer does not hand FitData.fingerprint_kind and loaded_fingerprints() to RunInfo yet")
    assert result.status == "completed" and start.fingerprint_kind == "loaded"
    assert (start.train_sha256, start.val_sha256) == ("", "")
    assert (
        (first.train_sha256, first.val_sha256)
        == data.loaded_fingerprints()
        == (
            second.train_sha256,
            second.val_sha256,
        )
    )
