"""Seeded train/validation splits and cross-validation folds of sample indices."""

from __future__ import annotations

import numpy as np

from segtrack.errors import DataError


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle, then the first ``val_fraction`` are validation. Both parts non-empty."""
    if count < 2:
        raise DataError(f"the dataset has {count} sample(s): at least 2 are needed (one to train, one to validate)")
    order = np.random.default_rng(seed).permutation(count)
    num_val = min(count - 1, max(1, round(count * val_fraction)))
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def fold_indices(count: int, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """K-fold: the seeded shuffle cut into ``folds`` near-equal parts; part ``fold`` validates."""
    if folds > count:
        raise DataError(f"{folds} folds need at least {folds} samples, the dataset has {count}: lower --folds")
    order = np.random.default_rng(seed).permutation(count)
    parts = np.array_split(order, folds)
    val = parts[fold]
    train = np.concatenate([p for i, p in enumerate(parts) if i != fold])
    return np.sort(train), np.sort(val)
