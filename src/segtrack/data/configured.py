"""The data that settings name: synthetic, a folder, an entry point or a factory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from segtrack.data.synthetic import ArrayDataset, load_arrays
from segtrack.errors import DataError


def configured_data(config: dict):
    """The data that settings name: ``(train, val, predefined_split)``. ``train`` is an
    ``ArrayDataset`` (synthetic), a ``FolderDataset`` (folder) or what a ``segtrack.datasets``
    entry point or ``data.factory`` returns; ``val`` is None unless that returned a pair."""
    data, model, train = config["data"], config["model"], config["train"]
    if data.get("factory") or data["source"] not in ("synthetic", "folder"):
        from segtrack.models.registry import build_dataset

        offered = {
            "num_classes": data["num_classes"],
            "in_channels": model["in_channels"],
            "dims": data["dims"],
            "seed": train["seed"],
            "path": data["path"],
            "config": config,
        }
        train_set, val_set = build_dataset(data, offered)
        return train_set, val_set, None
    if data["source"] == "synthetic":
        return ArrayDataset(*load_arrays(data, model, train["seed"])), None, None
    if not data["path"]:
        raise DataError('data.source is "folder" but data.path is empty: set data.path to the dataset folder')
    from segtrack.data.folder import FolderDataset

    crop = data["crop"] if isinstance(data["crop"], list) else ([data["crop"]] if data["crop"] else None)
    dataset = FolderDataset(
        data["path"],
        dims=data["dims"],
        channels=model["in_channels"],
        normalize=data["normalize"],
        crop=crop,
        augment=train["augment"],
        seed=train["seed"],
        crop_foreground=data["crop_foreground"],
        ignore_index=None if data["ignore_index"] == "none" else data["ignore_index"],
    )
    dataset.check(data["num_classes"], dataset.ignore_index)
    return dataset, None, dataset.predefined_split()


def data_source(data: Mapping[str, Any], given: Any) -> str:
    """Where the data comes from, in one line (``RunInfo.data_source``)."""
    if given is not None:
        kind = type(given.dataset if isinstance(given, torch.utils.data.DataLoader) else given)
        return f"python:{kind.__module__}.{kind.__qualname__}"
    if data.get("factory"):
        return f"factory:{data['factory']}"
    if data["source"] == "folder":
        return f"folder:{Path(data['path']).resolve()}"
    if data["source"] == "synthetic":
        return "synthetic"
    return f"dataset:{data['source']}"
