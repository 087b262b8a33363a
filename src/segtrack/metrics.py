"""Loss (cross-entropy + soft Dice) and validation metrics (Dice, IoU), for 2D and 3D masks.

Mask pixels equal to ``samples.IGNORED`` count in neither the loss nor any metric."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segtrack.samples import IGNORED


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """``logits`` (N, K, *spatial), ``target`` (N, *spatial) class ids or ``IGNORED``."""
    ce = F.cross_entropy(logits, target, ignore_index=IGNORED)
    if dice_weight == 0:
        return ce
    probs = logits.float().softmax(dim=1)
    valid = (target != IGNORED).unsqueeze(1).to(probs.dtype)
    one_hot = F.one_hot(target.clamp_min(0), probs.shape[1]).movedim(-1, 1).to(probs.dtype) * valid
    probs = probs * valid
    dims = (0, *range(2, probs.ndim))
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
