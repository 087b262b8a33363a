"""A third-party segtrack plugin: one CSV row per epoch.

Settings (section named after the entry point, ``csv``):
    [default.csv]
    path = "metrics.csv"   # relative paths are relative to the working directory
"""

from __future__ import annotations

import csv
from pathlib import Path

from segtrack import ConfigError, hookimpl

COLUMNS = ("run_name", "fold", "epoch", "train_loss", "val_loss", "val_dice", "val_iou", "lr", "is_best")


class CsvLogger:
    """The entry point names this class, so every trainer gets its own instance."""

    def __init__(self):
        self.path = Path("metrics.csv")

    @hookimpl
    def settings_loaded(self, settings):
        section = settings.get("csv", {}) or {}
        path = section.get("path", "metrics.csv")
        if not isinstance(path, str) or not path:
            raise ConfigError(f'csv.path = {path!r} is invalid: set it to a file path, e.g. "metrics.csv"')
        self.path = Path(path)

    @hookimpl
    def epoch_end(self, run, epoch):
        new_file = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new_file:
                writer.writerow(COLUMNS)
            m = epoch.metrics
            writer.writerow(
                [
                    run.run_name,
                    "" if run.fold is None else run.fold,
                    epoch.epoch,
                    m["train_loss"],
                    m["val_loss"],
                    m["val_dice"],
                    m["val_iou"],
                    m["lr"],
                    int(epoch.is_best),
                ]
            )
