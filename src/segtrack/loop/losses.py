"""The built-in losses (``train.loss``) and deep supervision's weighting of several outputs.

Every loss takes logits ``(N, K, *spatial)`` and targets ``(N, *spatial)`` of class ids, where
``data.batches.IGNORED`` (-1) marks pixels that count nowhere, and returns a scalar tensor."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from segtrack.data.batches import IGNORED, logits_of
from segtrack.errors import ModelError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORED)


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy with each pixel's term scaled by ``(1 - p_true) ** gamma``: confident pixels weigh less."""
    log_probs = logits.float().log_softmax(dim=1)
    valid = target != IGNORED
    true = target.clamp_min(0).unsqueeze(1)
    log_p = log_probs.gather(1, true).squeeze(1)
    terms = -((1 - log_p.exp()) ** gamma) * log_p
    if weight is not None:
        terms = terms * weight[true.squeeze(1)]
    return (terms * valid).sum() / valid.sum().clamp_min(1)


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - the mean soft Dice of the foreground classes, over the whole batch (not per sample)."""
    probs = logits.float().softmax(dim=1)
    valid = (target != IGNORED).unsqueeze(1).to(probs.dtype)
    one_hot = F.one_hot(target.clamp_min(0), probs.shape[1]).movedim(-1, 1).to(probs.dtype) * valid
    probs = probs * valid
    axes = (0, *range(2, probs.ndim))
    intersection = (probs * one_hot).sum(axes)
    denominator = probs.sum(axes) + one_hot.sum(axes)
    dice = (2 * intersection + 1.0) / (denominator + 1.0)
    return 1 - dice[1:].mean()


def ce_dice(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """The default loss: cross-entropy + ``dice_weight`` * soft Dice loss."""
    return cross_entropy(logits, target) + dice_weight * soft_dice(logits, target)


class BuiltinLoss:
    """``train.loss`` with its settings: ``ce``, ``dice``, ``ce_dice`` (ce + dice_weight * dice) or
    ``focal_dice`` (focal + dice_weight * dice); class weights apply to the ce/focal term."""

    def __init__(self, name: str, dice_weight: float, class_weights: Sequence[float], focal_gamma: float):
        self.name, self.dice_weight, self.focal_gamma = name, dice_weight, focal_gamma
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        if self.name == "dice":
            return soft_dice(logits, target)
        first = (
            cross_entropy(logits, target, weight)
            if self.name != "focal_dice"
            else focal(logits, target, self.focal_gamma, weight)
        )
        if self.name == "ce" or self.dice_weight == 0:
            return first
        return first + self.dice_weight * soft_dice(logits, target)

    def __repr__(self) -> str:
        return f"BuiltinLoss({self.name!r})"


def builtin_loss(train: Mapping[str, Any]) -> BuiltinLoss:
    return BuiltinLoss(train["loss"], train["dice_weight"], train["class_weights"], train["focal_gamma"])


def level_weights(levels: int, drop_lowest: bool) -> list[float]:
    """Deep supervision weights: halving per level from full resolution, the coarsest at 0 when
    ``drop_lowest`` (and there is more than one level), normalised to sum to 1."""
    weights = [1 / 2**i for i in range(levels)]
    if drop_lowest and levels > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def deep_supervision_loss(
    loss: Loss, outputs: Sequence[torch.Tensor], target: torch.Tensor, drop_lowest: bool
) -> torch.Tensor:
    """The weighted sum of ``loss`` over every output, each against the target resized (nearest
    neighbour) to its size. A level of weight 0 still joins the graph (times 0), so DDP sees a
    gradient for every parameter."""
    total = torch.zeros((), device=target.device)
    for weight, logits in zip(level_weights(len(outputs), drop_lowest), outputs):
        if weight == 0:
            total = total + logits.sum() * 0.0
            continue
        total = total + weight * loss(logits, resized_target(target, logits.shape[2:]))
    return total


def resized_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(target.shape[1:]) == tuple(size):
        return target
    resized = F.interpolate(target.unsqueeze(1).float(), size=tuple(size), mode="nearest")
    return resized.squeeze(1).long()


def supervised_outputs(output: Any, target_ndim: int) -> list[torch.Tensor]:
    """A deep-supervision model's training output as a list, full resolution first: a list/tuple of
    logits (nnU-Net), MONAI's stacked ``(N, S, K, *spatial)`` tensor, or one tensor (a model that
    returns a single output in training mode too)."""
    if isinstance(output, (list, tuple)) and output and all(isinstance(o, torch.Tensor) for o in output):
        return list(output)
    if isinstance(output, torch.Tensor) and output.ndim == target_ndim + 2:
        return list(output.unbind(1))
    if isinstance(output, (list, tuple)):
        raise ModelError(
            f"train.deep_supervision = true but the model returned a {type(output).__name__} of "
            f"{', '.join(type(o).__name__ for o in output) or 'nothing'}: return a list of logit tensors"
        )
    return [logits_of(output)]
