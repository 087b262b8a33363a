"""A cross-validation parent's run description (MLflow shows ``mlflow.note.content`` as markdown on
the run page): one row per fold with the monitored and main metrics of its best epoch, then the
mean ± std across folds."""

from __future__ import annotations

import math
from typing import Any

MAIN = ("val_dice", "val_iou", "val_loss")
MAX_NOTE = 5000  # MLflow's tag value limit


def _number(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def describe(result: Any, monitor: str | None) -> str:
    columns = [monitor, *[m for m in MAIN if m != monitor]] if monitor else list(MAIN)
    header = ["fold", "status", "best epoch", *columns]
    lines = [
        f"**Cross-validation, {result.num_folds} folds**: each fold's best epoch by `{monitor}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for fold in result.folds:
        values = [_number(fold.best_metrics.get(c)) for c in columns]
        lines.append(f"| {fold.fold + 1} | {fold.status} | {fold.best_epoch + 1} | " + " | ".join(values) + " |")
    stats = [result.summary.get(c, {}) for c in columns]
    spread = [f"{_number(s.get('mean'))} ± {_number(s.get('std'))}" if s else "-" for s in stats]
    lines.append("| **mean ± std** | | | " + " | ".join(spread) + " |")
    note = "\n".join(lines)
    return note if len(note) <= MAX_NOTE else note[: MAX_NOTE - 20] + "\n\n(table cut)"
