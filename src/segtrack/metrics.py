"""Loss (cross-entropy + soft Dice) and validation metrics (Dice, IoU over foreground classes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float) -> torch.Tensor:
    ce = F.cross_entropy(logits, target)
    if dice_weight == 0:
        return ce
    probs = logits.float().softmax(dim=1)
    one_hot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    soft_dice = (2 * intersection + 1.0) / (denominator + 1.0)
    return ce + dice_weight * (1 - soft_dice[1:].mean())


class ConfusionCounts:
    """Per-class true positives, false positives and false negatives summed over a dataset."""

    def __init__(self, num_classes: int, device: torch.device):
        self.counts = torch.zeros(3, num_classes, dtype=torch.float64, device=device)
        self.num_classes = num_classes

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        classes = torch.arange(self.num_classes, device=prediction.device).view(-1, 1)
        pred = prediction.reshape(1, -1) == classes
        true = target.reshape(1, -1) == classes
        self.counts[0] += (pred & true).sum(1).to(torch.float64)
        self.counts[1] += (pred & ~true).sum(1).to(torch.float64)
        self.counts[2] += (~pred & true).sum(1).to(torch.float64)

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
