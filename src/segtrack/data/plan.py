"""The data of a fit, whichever way it arrived: the configured dataset, a user's map-style
``Dataset``, or ready ``DataLoader``s. Splits and folds, seeded batch order per epoch (so a resumed
fit sees the same batches), rank sharding, lists of crops flattened into batches, preview samples
and fingerprints."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segtrack.config.settings import ignore_index
from segtrack.data.batches import IGNORED, as_pair, crops_of
from segtrack.data.digests import combine_digests, input_digest, plain_input, sample_digest
from segtrack.data.splits import fold_indices, split_indices
from segtrack.data.synthetic import ArrayDataset
from segtrack.errors import ConfigError, DataError
from segtrack.runtime.distributed import DistContext, shard

log = logging.getLogger("segtrack.data")
PREVIEW_SAMPLES = 4  # the first validation samples: shown to plugins, and the ONNX parity check's input

# How FitData's fingerprints identify the data: none of them runs a dataset's random
# transforms, and none costs a pass over the data of its own.
FINGERPRINT_KINDS = (
    "arrays",  # the built-in in-memory data: each sample's arrays
    "sample_digest",  # the dataset's own sample_digest(index) (the folder dataset: its files' bytes)
    "inputs",  # the inputs a dataset keeps in .data (MONAI: dicts of paths or arrays), files by their bytes
    "loaded",  # what the first epoch loads, digested as the loop's batches pass; known after epoch 0
)

# The offset of each random stream of an epoch, see stream_seed
STREAM_OFFSETS = {"order": 0, "flips": 1, "train_rng": 2, "transforms": 3}


def stream_seed(seed: int, epoch: int, stream: str) -> int:
    """The seed of one random stream of one epoch: ``"order"`` (the batch order), ``"flips"`` (the
    built-in data's flips), ``"train_rng"`` (torch, numpy and random at the start of a training
    epoch: dropout, a user's own augmentation).

    Each stream gets a generator of its own, seeded from (seed, epoch) alone, never one generator
    shared by all: what one stream draws cannot shift another's numbers, and a fit resumed at
    epoch e draws what an uninterrupted fit draws there. The factor, a prime above any epoch count,
    keeps the seeds of two base seeds apart. The offsets are small, so stream k + 1 of epoch e has
    the seed of stream k of epoch e + 1 (they draw different things from it); the values are those
    segtrack always used, so runs and checkpoints made before stay reproducible."""
    return seed * 100_003 + epoch + STREAM_OFFSETS[stream]


@dataclass(frozen=True)
class FitData:
    """What one fit trains and validates on."""

    train_batches: Callable[[int], Iterable[Any]]  # epoch -> batches (any supported batch form)
    val_batches: Callable[[], Iterable[Any]]
    preview: tuple[torch.Tensor, torch.Tensor]  # the first PREVIEW_SAMPLES validation samples, stacked, loop form
    train_sha256: str  # "" until loaded_fingerprints() knows it, when fingerprint_kind is "loaded"
    val_sha256: str
    num_train: int  # dataset items (an item that is a list of crops counts once)
    num_val: int
    batches_per_epoch: int  # on this rank; 0 where the loader has no length
    # one of FINGERPRINT_KINDS: "loaded" when either side is, else the training side's
    fingerprint_kind: str = ""
    loaded: _LoadedDigests | None = field(default=None, repr=False, compare=False)

    def loaded_fingerprints(self) -> tuple[str, str]:
        """``(train_sha256, val_sha256)``. For ``fingerprint_kind == "loaded"``: ``("", "")`` until
        the training batches of epoch 0 and the complete validation pass after them have gone
        through the loop (the trainer asks after epoch 0); a fit resumed after epoch 0 never knows
        them. Under torchrun they cover this rank's share of the data."""
        if self.loaded is None:
            return self.train_sha256, self.val_sha256
        return self.loaded.fingerprints()


class DataPlan:
    """Turns the trainer's data (configured or passed in) into one ``FitData`` per fit or fold."""

    def __init__(
        self,
        config: dict,
        dist: DistContext,
        pin_memory: bool,
        train_data: Any = None,
        val_data: Any = None,
        builtin: ArrayDataset | None = None,
        predefined_split: tuple[np.ndarray, np.ndarray] | None = None,
        spatial_multiple: int = 1,
    ):
        self.dims = config["data"]["dims"]
        self.ignore_index = ignore_index(config["data"])
        self.seed = config["train"]["seed"]
        self.batch_size = config["train"]["batch_size"]
        self.num_workers = config["train"]["num_workers"]
        self.augment = config["train"]["augment"] and builtin is not None  # user data brings its own
        self.dist, self.pin_memory = dist, pin_memory
        self.predefined_split, self.spatial_multiple = predefined_split, spatial_multiple
        self.train_loader = train_data if isinstance(train_data, DataLoader) else None
        self.val_loader = val_data if isinstance(val_data, DataLoader) else None
        # any map-style dataset: typed Any, as torch's Dataset declares no __len__
        self.dataset: Any = builtin if builtin is not None else _map_style(train_data, "train_data")
        self.val_dataset: Any = _map_style(val_data, "val_data") if val_data is not None else None
        self._digests: dict[int, list[bytes | None]] = {}  # per dataset: each item's digest, once computed
        self._kinds: dict[int, str] = {}  # per dataset: its fingerprint kind
        for loader in (self.train_loader, self.val_loader):
            if loader is not None and dist.enabled and not _distributed_sampler(loader):
                raise ConfigError(
                    "under torchrun a DataLoader passed as train_data/val_data needs a "
                    "DistributedSampler: pass the Dataset instead and segtrack shards it per rank"
                )

    @property
    def splittable_count(self) -> int:
        if self.dataset is None:
            raise ConfigError(
                "train_data is a DataLoader over an iterable dataset: it cannot be split; pass "
                "val_data too, or a map-style Dataset"
            )
        return len(self.dataset)

    # -- one fit ---------------------------------------------------------------------------------

    def for_split(self, val_fraction: float) -> FitData:
        """The plain fit: user train/val as given, else a seeded split of the one dataset."""
        if self.val_dataset is not None or self.val_loader is not None:
            return self._given_pair()
        if self.predefined_split is not None:  # train.txt / val.txt of a folder
            return self._subsets(*self.predefined_split)
        train_idx, val_idx = split_indices(self.splittable_count, val_fraction, self.seed)
        return self._subsets(train_idx, val_idx)

    def for_fold(self, fold: int, folds: int) -> FitData:
        train_idx, val_idx = fold_indices(self.splittable_count, folds, fold, self.seed)
        return self._subsets(train_idx, val_idx)

    def _subsets(self, train_idx: np.ndarray, val_idx: np.ndarray) -> FitData:
        """Train and validate on two index sets of the one dataset (a split, a fold)."""
        dataset = self.dataset
        train_batches, count = self._batches(dataset, train_idx, shuffle=True, template=self.train_loader)
        val_batches, _ = self._batches(dataset, val_idx, shuffle=False, template=self.train_loader)
        kind = self._kind(dataset)
        return self._fit_data(
            train_batches,
            lambda: val_batches(0),
            self._preview(dataset, val_idx),
            (kind, self._fingerprint(dataset, train_idx, kind)),
            (kind, self._fingerprint(dataset, val_idx, kind)),
            len(train_idx),
            len(val_idx),
            count,
        )

    def _given_pair(self) -> FitData:
        """Separate train and validation data: loaders used as given, datasets batched here."""
        # "is not None", not "or": a DataLoader over an iterable dataset without __len__ raises on bool()
        if self.train_loader is not None:
            train_batches, count = _as_given(self.train_loader, self.seed)
        else:
            train_batches, count = self._batches(self.dataset, np.arange(len(self.dataset)), shuffle=True)
        if self.val_loader is not None:
            val_batches, _ = _as_given(self.val_loader)
        else:
            val_batches, _ = self._batches(self.val_dataset, np.arange(len(self.val_dataset)), shuffle=False)

        val_set = self.val_dataset
        if val_set is not None:
            preview = self._preview(val_set, np.arange(len(val_set)))
        else:
            images, masks = self._loop_pair(_first(val_batches(0)))
            preview = images[:PREVIEW_SAMPLES], masks[:PREVIEW_SAMPLES]
        train_kind, val_kind = self._kind(self.dataset), self._kind(val_set)
        return self._fit_data(
            train_batches,
            lambda: val_batches(0),
            preview,
            (train_kind, self._fingerprint(self.dataset, np.arange(sample_count(self.dataset)), train_kind)),
            (val_kind, self._fingerprint(val_set, np.arange(sample_count(val_set)), val_kind)),
            sample_count(self.dataset),
            sample_count(val_set),
            count,
        )

    def _batches(
        self, dataset: Any, indices: np.ndarray, shuffle: bool, template: DataLoader | None = None
    ) -> tuple[Callable[[int], Iterable[Any]], int]:
        """The one batching path over a map-style dataset: ``epoch -> batches`` of ``indices`` and
        the batches per epoch on this rank. Training batches are shuffled per (seed, epoch), sharded
        over ranks and drawn in the dataset's training form; validation batches keep their order,
        each rank taking every world_size-th sample. ``template`` (a user's loader over the same
        dataset) lends its batch size, collate function and workers."""
        batch_size = template.batch_size if template is not None and template.batch_size else self.batch_size
        collate = template.collate_fn if template is not None else self._collate
        workers = template.num_workers if template is not None else self.num_workers
        if shuffle:
            order_of = _EpochOrder(len(indices), batch_size, self.seed, self.dist)

            def shuffled(epoch: int) -> Iterator[Any]:
                batches = [indices[b].tolist() for b in order_of(epoch)]
                view = _training_view(dataset, epoch, self.seed)
                yield from self._flipped(self._fetch(view, batches, collate, workers), epoch)

            return shuffled, order_of.count
        mine = indices[self.dist.rank :: self.dist.world_size]
        fixed = [mine[i : i + batch_size].tolist() for i in range(0, len(mine), batch_size)]
        return (lambda epoch: self._fetch(dataset, fixed, collate, workers)), len(fixed)

    def _fit_data(
        self,
        train_batches: Callable[[int], Iterable[Any]],
        val_batches: Callable[[], Iterable[Any]],
        preview: tuple[torch.Tensor, torch.Tensor],
        train_fingerprint: tuple[str, str],
        val_fingerprint: tuple[str, str],
        num_train: int,
        num_val: int,
        batches_per_epoch: int,
    ) -> FitData:
        """FitData with its fingerprints: ``(kind, sha256)`` per side, the sha256 "" for "loaded"
        (then both sides wait for the first epoch, digested by watching the loop's batches)."""
        (train_kind, train_sha), (val_kind, val_sha) = train_fingerprint, val_fingerprint
        loaded = _LoadedDigests(self._loop_pair, train_sha, val_sha) if "loaded" in (train_kind, val_kind) else None
        return FitData(
            train_batches=loaded.watch_train(train_batches) if loaded else train_batches,
            val_batches=loaded.watch_val(val_batches) if loaded else val_batches,
            preview=preview,
            train_sha256="" if loaded else train_sha,
            val_sha256="" if loaded else val_sha,
            num_train=num_train,
            num_val=num_val,
            batches_per_epoch=batches_per_epoch,
            fingerprint_kind="loaded" if loaded else train_kind,
            loaded=loaded,
        )

    # -- batches ---------------------------------------------------------------------------------

    def _fetch(self, dataset, batches: list[list[int]], collate, workers: int) -> Iterable[Any]:
        if isinstance(dataset, ArrayDataset) and workers == 0:
            # in memory: index whole batches (a DataLoader would fetch and stack sample by sample)
            return ((dataset.images[b], dataset.masks[b]) for b in batches)
        return _Unwrapped(
            DataLoader(
                dataset,
                batch_sampler=batches,
                num_workers=workers,
                collate_fn=collate,
                pin_memory=self.pin_memory,
                persistent_workers=False,
            )
        )

    def _collate(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Items stacked into a batch, every crop of an item that is a list of crops (B items of N
        crops: B * N samples); samples of different sizes, or sides the model cannot take, are
        padded (images with 0, masks with ignored pixels, so the loss and metrics see only the real
        area)."""
        return pad_stack([pair for item in items for pair in self._pairs(item)], self.spatial_multiple)

    def _pairs(self, item: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The samples of one dataset item (one, or each of its crops) in the loop's form."""
        return [as_pair(s, self.dims, batched=False, ignore_index=self.ignore_index) for s in crops_of(item)]

    def _loop_pair(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return as_pair(batch, self.dims, batched=True, ignore_index=self.ignore_index)

    def _flipped(self, batches: Iterable[Any], epoch: int) -> Iterator[Any]:
        """The built-in data's augmentation: random flips of the last axis, seeded per epoch."""
        if not self.augment:
            yield from batches
            return
        flips = torch.Generator().manual_seed(stream_seed(self.seed, epoch, "flips"))
        for images, masks in batches:
            flip = torch.rand(len(images), generator=flips) < 0.5
            images = torch.where(flip.view(-1, *[1] * (images.ndim - 1)), images.flip(-1), images)
            masks = torch.where(flip.view(-1, *[1] * (masks.ndim - 1)), masks.flip(-1), masks)
            yield images, masks

    # -- preview samples and fingerprints --------------------------------------------------------

    def _preview(self, dataset, val_idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The first PREVIEW_SAMPLES validation samples (every crop of an item counts)."""
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for index in val_idx:
            if len(pairs) >= PREVIEW_SAMPLES:
                break
            if isinstance(dataset, ArrayDataset):
                pairs.append((dataset.images[index], dataset.masks[index]))
            else:
                pairs.extend(self._pairs(dataset[int(index)]))
        pairs = pairs[:PREVIEW_SAMPLES]
        shapes = {tuple(p[0].shape) for p in pairs}
        if len(shapes) > 1:  # samples of mixed sizes: keep the ones shaped like the first
            pairs = [p for p in pairs if tuple(p[0].shape) == tuple(pairs[0][0].shape)]
        return pad_stack(pairs, self.spatial_multiple)

    def _kind(self, dataset: Any) -> str:
        """How a dataset is fingerprinted (FINGERPRINT_KINDS): never by running its transforms."""
        if dataset is None:  # an iterable dataset behind a DataLoader
            return "loaded"
        if id(dataset) not in self._kinds:
            self._kinds[id(dataset)] = digest_kind(dataset)
        return self._kinds[id(dataset)]

    def _fingerprint(self, dataset: Any, indices: np.ndarray, kind: str) -> str:
        """The split's SHA256 from per-sample digests (each computed once per dataset, reused by
        every fold); "" for "loaded", known only once the first epoch has gone through."""
        if kind == "loaded":
            return ""
        digests = self._digests.setdefault(id(dataset), [None] * len(dataset))
        for i in indices:
            if digests[i] is None:
                digests[i] = _sample_digest(dataset, int(i), kind)
        return combine_digests(digests[i] for i in indices)


def pad_stack(pairs: list[tuple[torch.Tensor, torch.Tensor]], multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (image, mask) pairs, padding each spatial side at its end to the largest in the batch
    rounded up to ``multiple``: images with 0, masks with the ignored value."""
    sides = [max(p[1].shape[axis] for p in pairs) for axis in range(pairs[0][1].ndim)]
    sides = [math.ceil(side / multiple) * multiple for side in sides]
    images, masks = [], []
    for image, mask in pairs:
        missing = [side - have for side, have in zip(sides, mask.shape)]
        if any(missing):
            widths = [w for m in reversed(missing) for w in (0, m)]  # F.pad lists the last axis first
            image = torch.nn.functional.pad(image, widths, value=0.0)
            mask = torch.nn.functional.pad(mask, widths, value=IGNORED)
        images.append(image)
        masks.append(mask)
    return torch.stack(images), torch.stack(masks)


class _LoadedDigests:
    """The fingerprints of kind "loaded": each sample of the training batches of epoch 0 and of the
    first complete validation pass after them, digested in the loop's form as the loop iterates,
    combined order-independently. A pass left early (the preflight reads one batch) counts for
    nothing. Seeded per epoch like everything else, so two fits with the same seed agree even
    when the data's transforms are random. A side known from the start keeps its SHA256."""

    def __init__(self, to_pair: Callable[[Any], tuple[torch.Tensor, torch.Tensor]], train: str, val: str):
        self.to_pair = to_pair
        self.train, self.val = train, val
        self.digest_train, self.digest_val = not train, not val
        self.trained = False  # the training batches of epoch 0 have all gone through

    def fingerprints(self) -> tuple[str, str]:
        return (self.train, self.val) if self.train and self.val else ("", "")

    def watch_train(self, batches_of: Callable[[int], Iterable[Any]]) -> Callable[[int], Iterable[Any]]:
        def train_batches(epoch: int) -> Iterable[Any]:
            batches = batches_of(epoch)
            if epoch != 0 or self.trained:
                return batches
            return _Digesting(batches, self.to_pair if self.digest_train else None, self._trained)

        return train_batches

    def watch_val(self, batches_of: Callable[[], Iterable[Any]]) -> Callable[[], Iterable[Any]]:
        def val_batches() -> Iterable[Any]:
            batches = batches_of()
            if not self.trained or self.val:
                return batches
            return _Digesting(batches, self.to_pair, self._validated)

        return val_batches

    def _trained(self, sha256: str) -> None:
        self.trained = True
        if self.digest_train:
            self.train = sha256

    def _validated(self, sha256: str) -> None:
        self.val = sha256


class _Digesting:
    """Iterates batches, digesting each sample in the loop's form (nothing when ``to_pair`` is
    None); only a pass that reaches the end hands the combined SHA256 to ``done``."""

    def __init__(
        self,
        batches: Iterable[Any],
        to_pair: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None,
        done: Callable[[str], None],
    ):
        self.batches, self.to_pair, self.done = batches, to_pair, done

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        digests: list[bytes] = []
        for batch in self.batches:
            if self.to_pair is not None:
                images, masks = self.to_pair(batch)
                digests.extend(sample_digest(image, mask) for image, mask in zip(images, masks))
            yield batch
        self.done(combine_digests(digests))


class _TrainingView(Dataset):
    """A dataset's training form for one epoch: ``training_sample(index, epoch)`` (seeded crops
    and augmentation of the folder dataset, or of a user's dataset that offers the method)."""

    def __init__(self, dataset: Any, epoch: int):
        self.dataset, self.epoch = dataset, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset.training_sample(index, self.epoch)


class _SeededTransforms(Dataset):
    """A dataset whose random transforms own their random state (MONAI's ``Randomizable``: each keeps
    a numpy ``RandomState``), seeded anew for every sample from (seed, epoch, index): the crops and
    flips of a sample are the same in every run, whichever worker loads it, and a fit resumed at epoch
    e draws what an uninterrupted fit draws there."""

    def __init__(self, dataset: Any, epoch: int, seed: int):
        self.dataset, self.epoch, self.seed = dataset, epoch, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        self.dataset.transform.set_random_state(seed=sample_seed(self.seed, self.epoch, int(index)))
        return self.dataset[index]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed (numpy's ``RandomState`` takes no more) for one sample's transforms in one epoch."""
    key = f"{stream_seed(seed, epoch, 'transforms')}:{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def _training_view(dataset: Any, epoch: int, seed: int) -> Any:
    """A dataset's training form for ``epoch``: its own seeded samples, its seeded random transforms,
    or the dataset as it is."""
    if callable(getattr(dataset, "training_sample", None)):
        return _TrainingView(dataset, epoch)
    if callable(getattr(getattr(dataset, "transform", None), "set_random_state", None)):
        return _SeededTransforms(dataset, epoch, seed)
    return dataset


def explained_loader_error(error: BaseException) -> DataError | None:
    """A data-loading worker that died (the out-of-memory killer's SIGKILL, most often) as one
    sentence with the way on; None for any other error. torch says it as a RuntimeError, raised
    by its SIGCHLD handler wherever the main thread is, or first as a broken connection while a
    batch is received: the whole exception chain is looked at."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    said = [e for e in chain if isinstance(e, RuntimeError) and "DataLoader worker (pid" in str(e)]
    broken = [e for e in chain if isinstance(e, (ConnectionError, EOFError)) and _in_data_loader(e)]
    if not said and not broken:
        return None
    reason = str(said[0]).strip().splitlines()[0].rstrip(".") if said else f"{type(broken[0]).__name__} from a worker"
    return DataError(
        f"a data-loading worker died ({reason}), most likely killed by the system for lack of memory: the "
        f"checkpoints of finished epochs are intact; continue with --resume auto, with fewer train.num_workers "
        f"or a smaller train.batch_size"
    )


def _in_data_loader(error: BaseException) -> bool:
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename.endswith(("torch/utils/data/dataloader.py", "multiprocessing/queues.py")):
            return True
        frame = frame.tb_next
    return False


class _Unwrapped:
    """Iterates a DataLoader; a ``DataError`` raised in a worker process comes back as the worker's
    own one-line message (torch re-raises it with the worker's whole traceback as its text)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.loader
        except DataError as exc:
            text = str(exc)
            if "Traceback" not in text:
                raise
            raise DataError(text.strip().rsplit("DataError: ", 1)[-1]) from None


class _EpochOrder:
    """Batches of positions ``0..count-1`` in an order that depends on the seed and epoch only."""

    def __init__(self, count: int, batch_size: int, seed: int, dist: DistContext):
        self.count_items, self.batch_size, self.seed, self.dist = count, batch_size, seed, dist
        self.count = math.ceil(len(shard(torch.arange(count), dist)) / batch_size)

    def __call__(self, epoch: int) -> list[np.ndarray]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, "order"))
        order = shard(torch.randperm(self.count_items, generator=generator), self.dist).numpy()
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]


def _map_style(data: Any, name: str) -> Any:
    """The indexable dataset behind ``data`` (a Dataset, or a DataLoader's), or None if iterable."""
    dataset: Any = data.dataset if isinstance(data, DataLoader) else data
    if dataset is None:
        return None
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return None
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise ConfigError(
            f"{name} is a {type(data).__name__}: pass a map-style torch Dataset (with __len__ and "
            f"__getitem__) or a DataLoader"
        )
    if len(dataset) == 0:
        raise DataError(f"{name} is empty: it holds no samples")
    return dataset


def _distributed_sampler(loader: DataLoader) -> bool:
    from torch.utils.data.distributed import DistributedSampler

    batch_sampler: Any = loader.batch_sampler
    sampler = batch_sampler.sampler if batch_sampler is not None else loader.sampler
    return isinstance(sampler, DistributedSampler) or isinstance(loader.sampler, DistributedSampler)


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch`` on a loader's sampler (DistributedSampler reshuffles per epoch with it)."""
    if not isinstance(loader, DataLoader):
        return
    for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


def _as_given(loader: DataLoader, seed: int | None = None) -> tuple[Callable[[int], Iterable[Any]], int]:
    """A user's loader as ``epoch -> batches`` (its sampler told the epoch) and its batch count. With
    ``seed`` (training), random transforms its dataset owns (MONAI's) are seeded per (seed, epoch)
    before each epoch: with the order torch draws per epoch, the epoch's samples are the same in
    every run and after a resume (a loader's workers take that state with their copy of the dataset)."""

    def batches(epoch: int) -> Iterable[Any]:
        _set_sampler_epoch(loader, epoch)
        reseed = getattr(getattr(getattr(loader, "dataset", None), "transform", None), "set_random_state", None)
        if seed is not None and callable(reseed):
            reseed(seed=sample_seed(seed, epoch, -1))
        return loader

    return batches, batch_count(loader)


def batch_count(loader: Any) -> int:
    """Batches per epoch, 0 where the loader cannot tell (an iterable dataset without __len__)."""
    try:
        return len(loader)
    except TypeError:
        return 0


def sample_count(data: Any) -> int:
    """Samples of a dataset or of a DataLoader's dataset; 0 where it cannot tell."""
    dataset: Any = data.dataset if isinstance(data, DataLoader) else data
    try:
        return len(dataset) if dataset is not None else 0
    except TypeError:
        return 0


def _first(batches: Iterable[Any]) -> Any:
    for batch in batches:
        return batch
    raise DataError("val_data yielded no batch: the validation data is empty")


def _kept_inputs(dataset: Any) -> list[Any] | tuple[Any, ...] | None:
    """The inputs a dataset keeps as data, one per item, as MONAI's datasets keep them in
    ``.data`` (dicts of paths or arrays, or paths); None when it keeps none that can be hashed."""
    inputs = getattr(dataset, "data", None)
    if not isinstance(inputs, (list, tuple)) or len(inputs) != len(dataset):
        return None
    if not all(isinstance(x, (Mapping, str, os.PathLike)) and plain_input(x) for x in inputs):
        return None
    return inputs


def _sample_digest(dataset: Any, index: int, kind: str) -> bytes:
    if kind == "arrays":
        return sample_digest(dataset.images[index], dataset.masks[index])
    if kind == "sample_digest":  # a dataset may hash its files instead of decoding them
        return dataset.sample_digest(index)
    digest = input_digest(dataset.data[index])
    assert digest is not None  # plain_input checked every input
    return digest


def whole_fingerprint(data: Any) -> tuple[str, str]:
    """(SHA256, kind) of every sample of a dataset (or a DataLoader's) that a loop of one's own
    trains on, computed as the trainer computes it and without running transforms; ("", "") when
    only loading the data could tell (an iterable dataset, one that keeps no inputs)."""
    dataset: Any = data.dataset if isinstance(data, DataLoader) else data
    try:
        count = len(dataset)
    except TypeError:
        return "", ""
    if isinstance(dataset, torch.utils.data.TensorDataset) and len(dataset.tensors) >= 2:
        images, masks = dataset.tensors[0].numpy(force=True), dataset.tensors[1].numpy(force=True)
        return combine_digests(sample_digest(images[i], masks[i]) for i in range(count)), "arrays"
    kind = digest_kind(dataset)
    if kind == "loaded":
        return "", ""
    return combine_digests(_sample_digest(dataset, i, kind) for i in range(count)), kind


def digest_kind(dataset: Any) -> str:
    """How a map-style dataset's samples are digested without running its transforms: "arrays" (the
    built-in data), "sample_digest" (its own per-sample hashes), "inputs" (the inputs it keeps in
    ``.data``, MONAI-style), or "loaded" (only what loading it yields can tell)."""
    if isinstance(dataset, ArrayDataset):
        return "arrays"
    if callable(getattr(dataset, "sample_digest", None)):
        return "sample_digest"
    return "inputs" if _kept_inputs(dataset) is not None else "loaded"
