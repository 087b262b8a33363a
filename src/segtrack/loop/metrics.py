"""Validation metrics (Dice, IoU) from confusion counts, for 2D and 3D masks.

Mask pixels equal to ``data.batches.IGNORED`` count in neither the loss nor any metric."""

from __future__ import annotations

import torch

from segtrack.data.batches import IGNORED


class ConfusionCounts:
    """Per-class true positives, false positives and false negatives summed over a dataset."""

    def __init__(self, num_classes: int, device: torch.device):
        self.counts = torch.zeros(3, num_classes, dtype=torch.float64, device=device)
        self.num_classes = num_classes

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        valid = target.reshape(-1) != IGNORED
        k = self.num_classes
        # one bincount over (truth, prediction) pairs: the confusion matrix without a K x pixels mask
        pairs = target.reshape(-1)[valid] * k + prediction.reshape(-1)[valid]
        matrix = torch.bincount(pairs, minlength=k * k).reshape(k, k).to(torch.float64)
        tp = matrix.diagonal()
        self.counts[0] += tp
        self.counts[1] += matrix.sum(0) - tp
        self.counts[2] += matrix.sum(1) - tp

    def per_class(self) -> tuple[torch.Tensor, torch.Tensor]:
        tp, fp, fn = self.counts
        dice = (2 * tp) / (2 * tp + fp + fn)  # NaN where the class never occurs
        iou = tp / (tp + fp + fn)
        return dice, iou

    def mean_foreground(self) -> tuple[float, float]:
        dice, iou = self.per_class()
        dice, iou = dice[1:], iou[1:]
        present = ~torch.isnan(dice)
        if not present.any():
            return float("nan"), float("nan")
        return float(dice[present].mean()), float(iou[present].mean())
