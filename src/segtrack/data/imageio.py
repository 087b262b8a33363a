"""Reading images and masks from files, and writing predicted masks: PNG, JPEG, TIFF (8/16-bit,
float, multi-page), ``.npy``, NIfTI (``.nii``, ``.nii.gz``, axes as stored). Images come back
channel-first ``(C, *spatial)`` in their own dtype; masks as int64 class ids ``(*spatial)``.
Every failure is a ``DataError`` naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segtrack.errors import DataError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = PIL_SUFFIXES + TIFF_SUFFIXES + (".npy",) + NIFTI_SUFFIXES
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".npy", *NIFTI_SUFFIXES)


def file_suffix(path: Path) -> str:
    """The format's suffix, lower case: ``.nii.gz`` for a compressed NIfTI, else the last one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def file_stem(path: Path) -> str:
    """The name without the format's suffix (``case1`` for ``case1.nii.gz``)."""
    return path.name[: len(path.name) - len(file_suffix(path))]


def _nifti(path: Path) -> Any:
    """The NIfTI image at ``path`` (header read; data loaded on access)."""
    import nibabel

    return nibabel.load(str(path))


def nifti_affine(path: Path) -> np.ndarray | None:
    """A NIfTI file's affine (voxel to world), to write its mask in the same space; None otherwise."""
    if file_suffix(path) not in NIFTI_SUFFIXES:
        return None

    return np.asarray(_nifti(path).affine)


def read_image(path: Path, dims: int) -> np.ndarray:
    """``(C, H, W)`` for ``dims = 2``, ``(C, D, H, W)`` for ``dims = 3``, in the file's dtype."""
    array = _read(path, as_mask=False)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return _channel_first(array, dims, path)


def image_spatial_shape(path: Path, dims: int) -> tuple[int, ...]:
    """The spatial size of an image from its header only (nothing decoded)."""
    suffix = file_suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            shape = tuple(_nifti(path).shape)
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tuple(tif.series[0].shape)
        elif suffix == ".npy":
            shape = tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        else:
            from PIL import Image

            with Image.open(path) as im:
                bands = len(im.getbands()) if im.mode != "P" else 3
                shape = (im.height, im.width) + ((bands,) if bands > 1 else ())
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {path}: {reason}: replace or remove the file") from None
    # a zero-memory stand-in with the file's shape, laid out as read_image lays it out
    return _channel_first(np.broadcast_to(np.zeros((), np.uint8), shape), dims, path).shape[1:]


def read_mask(path: Path, dims: int) -> np.ndarray:
    """Class ids ``(*spatial)``: a palette PNG gives its palette indices; a single leading or
    trailing channel of 1 is dropped."""
    array = _read(path, as_mask=True)
    if array.ndim == dims + 1 and 1 in (array.shape[0], array.shape[-1]):
        array = array[0] if array.shape[0] == 1 else array[..., 0]
    if array.ndim != dims:
        raise DataError(
            f"{path} is a mask of shape {array.shape}, not {dims}D class ids: a mask holds one class "
            f"id per pixel (a single-channel or palette image)"
        )
    if np.issubdtype(array.dtype, np.floating) and (not np.all(np.isfinite(array)) or np.any(array != np.round(array))):
        raise DataError(f"{path} holds non-integer values: a mask holds whole class ids")
    return array.astype(np.int64)


def _read(path: Path, as_mask: bool) -> np.ndarray:
    suffix = file_suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            image = _nifti(path)
            # a mask keeps its stored integers; an image its scaled values (scl_slope/inter applied)
            return np.asarray(image.dataobj) if as_mask else np.asarray(image.get_fdata(dtype=np.float32))
        if suffix in TIFF_SUFFIXES:
            import tifffile

            return np.asarray(tifffile.imread(path))
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        return _read_pil(path, as_mask)
    except DataError:
        raise
    except Exception as exc:  # PIL, tifffile and numpy each raise their own kinds for broken files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {path}: {reason}: replace or remove the file") from None


def _read_pil(path: Path, as_mask: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if as_mask:
            if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                raise DataError(
                    f"{path} is a colour ({im.mode}) image: a mask must hold class ids (a grey or "
                    f"palette PNG, whose palette index is the class)"
                )
            return np.asarray(im)  # P: palette indices; L, I;16, I: the ids themselves
        if im.mode == "P":
            return np.asarray(im.convert("RGBA" if "transparency" in im.info else "RGB"))
        if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            return np.asarray(im.convert("RGB"))
        if im.mode == "1":
            return np.asarray(im.convert("L"))
        return np.asarray(im)


def _channel_first(array: np.ndarray, dims: int, path: Path) -> np.ndarray:
    if array.ndim == dims:
        return array[None]
    if array.ndim == dims + 1:
        if array.shape[-1] in (1, 2, 3, 4) and array.shape[0] not in (1, 3):
            return np.moveaxis(array, -1, 0)  # channels last (PIL, most TIFFs)
        if array.shape[0] in (1, 2, 3, 4):
            return array
        if array.shape[-1] in (1, 2, 3, 4):
            return np.moveaxis(array, -1, 0)
    kind = "an image (H, W[, C])" if dims == 2 else "a volume (D, H, W[, C]): a multi-page TIFF or .npy"
    raise DataError(f"{path} has shape {array.shape}, not {kind} for data.dims = {dims}: fix the file or data.dims")


def write_mask(path: Path, mask: np.ndarray, affine: np.ndarray | None = None) -> None:
    """A class-id mask: PNG for 2D (8-bit, or 16-bit above 255 classes), NIfTI (with the input's
    ``affine``) for a ``.nii``/``.nii.gz`` name, TIFF for the rest."""
    dtype = np.uint8 if mask.max(initial=0) < 256 else np.uint16
    data = mask.astype(dtype)
    tmp = path.with_name(f".tmp-{path.name}")  # the same suffix: nibabel compresses by name
    try:
        if file_suffix(path) in NIFTI_SUFFIXES:
            import nibabel

            nibabel.save(nibabel.Nifti1Image(data, affine if affine is not None else np.eye(4)), str(tmp))
        elif path.suffix.lower() == ".png":
            from PIL import Image

            Image.fromarray(data).save(tmp, format="PNG")
        else:
            import tifffile

            tifffile.imwrite(tmp, data, compression="zlib")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        Image.fromarray(rgb).save(tmp, format="PNG")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
