"""The folder dataset: ``images/`` and ``masks/`` with matching names, read lazily, one sample at a
time, with normalisation, random crops and seeded flips/rotations for training.

Nothing is decoded ahead of need: the dataset holds file paths only, so its memory does not grow
with the number of images, and DataLoader workers read in parallel."""

from __future__ import annotations

import hashlib
import logging
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from segtrack.data.batches import IGNORED
from segtrack.data.file_digests import file_state, remembered
from segtrack.data.imageio import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    file_stem,
    file_suffix,
    image_spatial_shape,
    read_image,
    read_mask,
)
from segtrack.errors import DataError

log = logging.getLogger("segtrack.data")
NORMALIZE_MODES = ("auto", "percentile", "minmax", "imagenet", "none")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SPLIT_FILES = ("train.txt", "val.txt")
JPEG_SUFFIXES = (".jpg", ".jpeg")


def normalize(image: np.ndarray, mode: str) -> np.ndarray:
    """float32 ``(C, *spatial)`` from an image in its file's dtype (see ``data.normalize``)."""
    integer = np.issubdtype(image.dtype, np.integer)
    if mode == "auto":
        mode = "scale8" if image.dtype == np.uint8 else "percentile"
    values = image.astype(np.float32)
    if mode == "scale8":
        return values / 255.0
    if mode == "none":
        return values
    if mode == "imagenet":
        scale = float(np.iinfo(image.dtype).max) if integer else 1.0
        shape = (-1,) + (1,) * (image.ndim - 1)
        return (values / scale - IMAGENET_MEAN[: len(values)].reshape(shape)) / IMAGENET_STD[: len(values)].reshape(
            shape
        )
    flat = values.reshape(len(values), -1)
    if mode == "percentile":  # robust to hot pixels and a dark background, per channel
        low, high = np.percentile(flat, [1.0, 99.8], axis=1)
    else:  # minmax
        low, high = flat.min(axis=1), flat.max(axis=1)
    shape = (-1,) + (1,) * (image.ndim - 1)
    span = np.maximum(high - low, 1e-6).reshape(shape)
    return (
        np.clip((values - low.reshape(shape)) / span, 0.0, 1.0)
        if mode == "percentile"
        else (values - low.reshape(shape)) / span
    )


def match_channels(image: np.ndarray, channels: int, path: Path | str) -> np.ndarray:
    """Grey repeated to 3 channels, colour averaged to grey, an alpha channel dropped."""
    have = image.shape[0]
    if have == channels:
        return image
    if have in (2, 4):  # grey + alpha, RGB + alpha
        image, have = image[: have - 1], have - 1
        if have == channels:
            return image
    if have == 1:
        return np.repeat(image, channels, axis=0)
    if channels == 1 and have == 3:
        return image.mean(axis=0, keepdims=True, dtype=np.float32).astype(image.dtype)
    raise DataError(f"{path} has {have} channels but model.in_channels = {channels}: set model.in_channels = {have}")


def scan_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    """(name, image, mask) for every image with a mask of the same stem, sorted by name. Files that
    are not regular files (FIFOs, sockets, broken links) are left out, with one warning naming
    them; JPEG masks are refused (JPEG is lossy: class ids would change at every edge)."""
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(
                f"{folder} is missing: data.path must hold images/ and masks/ folders "
                f"(image and mask files with the same names)"
            )
    jpeg_masks = regular_files(mask_dir, JPEG_SUFFIXES)
    if jpeg_masks:
        raise DataError(
            f"{len(jpeg_masks)} mask(s) in {mask_dir} are JPEG ({_names(jpeg_masks)}), which is lossy and not "
            f"accepted for masks (it changes class ids at every edge): save the masks as PNG, TIFF or .npy"
        )
    left_out: list[str] = []
    images = _by_stem(image_dir, IMAGE_SUFFIXES, left_out)
    masks = _by_stem(mask_dir, MASK_SUFFIXES, left_out)
    if left_out:
        log.warning(
            "data: %d file(s) in %s left out, not regular files: %s",
            len(left_out),
            root,
            ", ".join(left_out),
        )
    if not images:
        raise DataError(
            f"{image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}): add image/mask pairs or use "
            f'data.source = "synthetic"'
        )
    only_images, only_masks = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if only_images or only_masks:
        raise DataError(
            f"image and mask names differ: without mask {only_images[:5]}, without image {only_masks[:5]}; "
            f"every images/NAME.<ext> needs masks/NAME.<ext>"
        )
    return [(name, images[name], masks[name]) for name in sorted(images)]


def regular_files(folder: Path, suffixes: Sequence[str], left_out: list[str] | None = None) -> list[Path]:
    """Files of ``folder`` with one of ``suffixes``, sorted; hidden files, FIFOs, sockets and
    broken links left out (reading a FIFO would block forever). Each file named like one of
    ``suffixes`` but left out is added to ``left_out`` as ``"folder/name (why)"``."""
    found = []
    for path in sorted(folder.iterdir()):
        if file_suffix(path) not in suffixes or path.name.startswith("."):
            continue
        try:
            mode = path.stat().st_mode
        except OSError:
            why = "a broken symbolic link" if path.is_symlink() else "unreadable"
        else:
            if stat.S_ISREG(mode):
                found.append(path)
                continue
            why = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        if left_out is not None:
            left_out.append(f"{folder.name}/{path.name} ({why})")
    return found


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFCHR: "a device"}


def _names(paths: Sequence[Path], shown: int = 5) -> str:
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(p.name for p in paths[:shown]) + more


def _by_stem(folder: Path, suffixes: Sequence[str], left_out: list[str] | None = None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in regular_files(folder, suffixes, left_out):
        stem = file_stem(path)
        if stem in found:
            raise DataError(f"{folder} holds two files named {stem} ({found[stem].name}, {path.name}): keep one")
        found[stem] = path
    return found


class FolderDataset(Dataset):
    """``(image, mask)`` pairs of a folder, decoded on access.

    ``dataset[i]`` is the validation form (whole image); ``training_sample(i, epoch)`` the training
    form: a random crop of ``crop`` (padded with ignored pixels where the image is smaller), centred
    on a random foreground pixel with probability ``crop_foreground`` (as nnU-Net oversamples
    foreground: with sparse foreground most uniform crops hold none), and random flips and 90-degree
    rotations, all drawn from ``(seed, epoch, i)`` so a resumed fit and any number of workers see
    the same samples. Foreground is a mask value above 0 other than ``ignore_index``."""

    def __init__(
        self,
        root: str | Path,
        *,
        dims: int,
        channels: int,
        normalize: str = "auto",
        crop: Sequence[int] | None = None,
        augment: bool = True,
        seed: int = 0,
        crop_foreground: float = 0.33,
        ignore_index: int | None = None,
    ):
        self.root = Path(root)
        self.pairs = scan_pairs(self.root)
        self.names = [name for name, _, _ in self.pairs]
        self.dims, self.channels, self.normalize = dims, channels, normalize
        self.crop = tuple(crop) if crop else None
        self.augment, self.seed = augment, seed
        self.crop_foreground, self.ignore_index = crop_foreground, ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._read(index)
        return torch.from_numpy(image), torch.from_numpy(mask)

    def training_sample(self, index: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._read(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        if self.crop:
            # no draw at crop_foreground = 0: the crops stay those of a fit without the setting
            wanted = self.crop_foreground > 0 and rng.random() < self.crop_foreground
            centre = foreground_pixel(mask, self.ignore_index, rng) if wanted else None
            image, mask = random_crop(image, mask, self.crop, rng, centre)
        if self.augment:
            image, mask = flip_rotate(image, mask, rng)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(mask))

    def sample_digest(self, index: int) -> bytes:
        """SHA256 of the image file's bytes, then the mask file's: no decoding, constant memory;
        read once per process while both files are unchanged (``file_digests``)."""
        _, image_path, mask_path = self.pairs[index]
        return remembered(lambda: _pair_state(image_path, mask_path), lambda: _files_sha256(image_path, mask_path))

    def check(self, num_classes: int, ignore_index: int | None) -> None:
        """One streaming pass before training: every mask decodes, matches its image's size (read
        from the image's header) and holds valid class ids; the first problem is named."""
        allowed = set(range(num_classes)) | ({ignore_index} if ignore_index is not None else set())
        for _, image_path, mask_path in self.pairs:
            mask = read_mask(mask_path, self.dims)
            spatial = image_spatial_shape(image_path, self.dims)
            if tuple(spatial) != mask.shape:
                raise DataError(
                    f"{image_path.name}: the image is {_size(spatial)} but its mask is {_size(mask.shape)}: "
                    f"a mask must match its image's size"
                )
            ids = np.unique(mask)
            bad = [int(v) for v in ids if int(v) not in allowed]
            if bad:
                ignore = (
                    f"data.ignore_index = {ignore_index}"
                    if ignore_index is not None
                    else "data.ignore_index is not set"
                )
                raise DataError(
                    f"{mask_path} holds class ids {bad[:5]} outside 0..{num_classes - 1} ({ignore}): fix the "
                    f"mask, raise data.num_classes, or set data.ignore_index to the id to leave out"
                )

    def predefined_split(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Indices listed by ``train.txt`` and ``val.txt`` beside ``images/``, when both exist."""
        files = [self.root / name for name in SPLIT_FILES]
        if not any(f.exists() for f in files):
            return None
        if not all(f.is_file() for f in files):
            raise DataError(
                f"{self.root} has only one of train.txt / val.txt: add the other, or remove it to split "
                f"by data.val_fraction"
            )
        position = {name: i for i, name in enumerate(self.names)}
        parts = []
        for f in files:
            listed = [
                file_stem(Path(line.strip()))
                for line in f.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
            unknown = [n for n in listed if n not in position]
            if unknown:
                raise DataError(f"{f} names {unknown[:5]}, which have no image/mask pair: fix the list")
            if not listed:
                raise DataError(f"{f} lists no sample: list at least one name per line")
            parts.append(np.array(sorted({position[n] for n in listed})))
        overlap = set(parts[0].tolist()) & set(parts[1].tolist())
        if overlap:
            names = [self.names[i] for i in sorted(overlap)][:5]
            raise DataError(f"train.txt and val.txt both list {names}: a sample may be in one split only")
        return parts[0], parts[1]

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        _, image_path, mask_path = self.pairs[index]
        image = read_image(image_path, self.dims)
        image = normalize(match_channels(image, self.channels, image_path), self.normalize)
        mask = read_mask(mask_path, self.dims)
        if image.shape[1:] != mask.shape:
            raise DataError(
                f"{image_path.name}: the image is {_size(image.shape[1:])} but its mask is "
                f"{_size(mask.shape)}: a mask must match its image's size"
            )
        return np.ascontiguousarray(image, dtype=np.float32), mask


def random_crop(
    image: np.ndarray,
    mask: np.ndarray,
    crop: Sequence[int],
    rng: np.random.Generator,
    centre: Sequence[int] | None = None,
):
    """A window of ``crop`` per spatial axis, at a random place or centred on ``centre`` (moved
    inside the image where the centre lies near an edge); sides shorter than the crop are padded
    (the image with 0, the mask with ignored pixels) so every training sample has the crop's size."""
    spatial = mask.shape
    crop = tuple(crop) if len(crop) == len(spatial) else (crop[0],) * len(spatial)
    pad = [max(0, c - s) for c, s in zip(crop, spatial)]
    if any(pad):
        image = np.pad(image, [(0, 0)] + [(0, p) for p in pad])
        mask = np.pad(mask, [(0, p) for p in pad], constant_values=IGNORED)
    if centre is None:
        starts = [int(rng.integers(0, s - c + 1)) for s, c in zip(mask.shape, crop)]
    else:
        starts = [min(max(0, int(m) - c // 2), s - c) for m, s, c in zip(centre, mask.shape, crop)]
    window = tuple(slice(a, a + c) for a, c in zip(starts, crop))
    return image[(slice(None), *window)], mask[window]


def foreground_pixel(mask: np.ndarray, ignore_index: int | None, rng: np.random.Generator) -> tuple[int, ...] | None:
    """The position of one foreground pixel (value above 0, not ``ignore_index``) drawn uniformly
    from the mask's foreground; None when it has none."""
    foreground = mask > 0
    if ignore_index is not None:
        foreground &= mask != ignore_index
    positions = np.flatnonzero(foreground)
    if not len(positions):
        return None
    chosen = positions[int(rng.integers(0, len(positions)))]
    return tuple(int(i) for i in np.unravel_index(chosen, mask.shape))


def flip_rotate(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
    """Random flips of every spatial axis and a random multiple of 90 degrees in the last two axes
    (only when they are equal, so a batch keeps one shape)."""
    for axis in range(mask.ndim):
        if rng.random() < 0.5:
            image, mask = np.flip(image, axis + 1), np.flip(mask, axis)
    turns = int(rng.integers(0, 4))
    if turns and mask.shape[-1] == mask.shape[-2]:
        image, mask = np.rot90(image, turns, axes=(-2, -1)), np.rot90(mask, turns, axes=(-2, -1))
    return image, mask


def _size(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape[::-1]))


def _files_sha256(*paths: Path) -> bytes:
    """SHA256 of the files' bytes one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror}: replace or remove the file") from None
    return digest.digest()


def _pair_state(*paths: Path) -> tuple[bytes, int]:
    """The key of ``_files_sha256(*paths)`` in ``remembered`` (a digest of the files' states: 32
    bytes kept, not the paths) and the newest time among the files."""
    states = tuple(file_state(path) for path in paths)
    newest = max((max(s.modified_ns, s.changed_ns) for s in states if s is not None), default=0)
    return b"pair:" + hashlib.sha256(repr(states).encode()).digest(), newest
