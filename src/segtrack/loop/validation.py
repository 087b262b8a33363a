"""The validation pass: every validation batch through the model (whole images, or window by window
with ``infer.roi_size``), the loss and confusion counts summed over every rank, the batches handed
to plugins, and the preview samples."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from segtrack.data.batches import check_logits, logits_of, to_loop_form
from segtrack.data.plan import FitData
from segtrack.errors import DataError, ModelError, SegtrackError
from segtrack.inference.windowed import sliding_window
from segtrack.loop.losses import Loss
from segtrack.loop.metrics import ConfusionCounts
from segtrack.loop.validation_batches import ValidationBatches
from segtrack.plugins.records import RunInfo, ValidationBatch, ValidationResult, ValidationSample
from segtrack.runtime.distributed import DistContext

# (images, model) -> logits, e.g. monai.inferers.SlidingWindowInferer(roi_size=..., mode="gaussian")
Inferer = Callable[[torch.Tensor, torch.nn.Module], Any]


class Validation:
    def __init__(
        self,
        config: Mapping[str, Any],
        loss: Loss,
        hooks: Any,
        dist: DistContext,
        device: torch.device,
        amp: bool,
        ignore_index: int | None,
        inferer: Inferer | None = None,
    ):
        self.infer, self.loss, self.hooks, self.dist = config["infer"], loss, hooks, dist
        self.inferer = inferer
        # rank 0's answer on every rank, once: a plugin registered on rank 0 alone must not leave it gathering alone
        self.batches_wanted = dist.broadcast_from_main(hooks.has_implementations("validation_batch_end"))
        self.device, self.amp, self.ignore_index = device, amp, ignore_index
        self.num_classes, self.dims = config["data"]["num_classes"], config["data"]["dims"]
        # where whole images and their logits live: the CPU when only windows go to the model's device
        cpu_output = inferer is None and self.infer["roi_size"] and self.infer["output_device"] == "cpu"
        self.where = torch.device("cpu") if cpu_output else device

    def logits(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Logits of a whole batch: the user's inferer, else in one pass, or window by window when
        infer.roi_size is set."""
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            if self.inferer is not None:
                return logits_of(self.inferer(images, model)).to(images.device)
            if not self.infer["roi_size"]:
                return logits_of(model(images))
            return sliding_window(
                model,
                images,
                self.infer["roi_size"],
                overlap=self.infer["overlap"],
                mode=self.infer["mode"],
                batch_size=self.infer["batch_size"],
                device=self.device,
                output_device=images.device,
            )

    @torch.no_grad()
    def preflight(self, model: torch.nn.Module, data: FitData) -> None:
        """The first validation batch through the model before anything is written or any hook
        fires: data or a model that does not fit fails here, with nothing left on disk."""
        batch = next(iter(data.val_batches()), None)
        if batch is None:
            if self.dist.enabled:
                return  # this rank's share of a tiny validation set is empty; another rank checks
            raise DataError("the validation data yields no batch: give it at least one sample")
        images, masks, _ = to_loop_form(batch, self.dims, self.num_classes, self.ignore_index, self.where)
        model.eval()
        try:
            logits = self.logits(model, images)
        except SegtrackError:
            raise
        except Exception as exc:  # the model's own error (a channel count, a size) as one sentence
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise ModelError(
                f"the model fails on the first validation batch (images {tuple(images.shape)}): "
                f"{type(exc).__name__}: {first}; check model.in_channels and data.dims against the model"
            ) from None
        check_logits(logits, masks, self.num_classes)

    @torch.no_grad()
    def run(self, model: torch.nn.Module, data: FitData, epoch: int, run: RunInfo, trainer: Any) -> ValidationResult:
        """Metrics over the whole validation data (every rank's share), the loss with the fit's
        loss, ``validation_batch_end`` for every batch, preview samples when a plugin reads them."""
        model.eval()
        counts = ConfusionCounts(self.num_classes, self.where)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.where)
        seen = 0
        batches = ValidationBatches(self.hooks, self.dist, trainer, run, self.batches_wanted)
        # preview samples for the plugins that read them (rank 0 only)
        wanted = self.hooks.has_implementations("validation_end") or self.hooks.has_implementations(
            "validation_metrics"
        )
        previews = PreviewPredictions(data.preview[0]) if self.dist.is_main and wanted else None
        for batch_index, batch in enumerate(data.val_batches()):
            images, masks, labelled = to_loop_form(batch, self.dims, self.num_classes, self.ignore_index, self.where)
            logits = self.logits(model, images)
            if batch_index == 0:
                check_logits(logits, masks, self.num_classes)
            if labelled:
                loss_sum += self.loss(logits.float(), masks).double() * len(images)
                seen += len(images)
            predictions = logits.argmax(1)
            counts.update(predictions, masks)
            if previews is not None:
                previews.take(images, predictions)
            batches.add(
                ValidationBatch(
                    epoch=epoch,
                    batch_index=batch_index,
                    images=images,
                    masks=masks,
                    logits=logits,
                    predictions=predictions,
                )
            )
        batches.finish()
        return self._result(model, data, epoch, counts, loss_sum, seen, previews)

    def _result(
        self,
        model: torch.nn.Module,
        data: FitData,
        epoch: int,
        counts: ConfusionCounts,
        loss_sum: torch.Tensor,
        seen: int,
        previews: PreviewPredictions | None,
    ) -> ValidationResult:
        counts.counts = self.dist.all_reduce_sum(counts.counts.to(self.device))
        totals = self.dist.all_reduce_sum(
            torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=self.where)]).to(self.device)
        )
        dice, iou = counts.mean_foreground()
        per_class_dice, per_class_iou = (tuple(float(v) for v in t.cpu()) for t in counts.per_class())
        return ValidationResult(
            epoch=epoch,
            val_loss=float(totals[0] / totals[1]) if float(totals[1]) else math.nan,
            val_dice=dice,
            val_iou=iou,
            per_class_dice=per_class_dice,
            num_samples=int(totals[1]),
            samples=self.preview(model, data, previews) if previews is not None else (),
            per_class_iou=per_class_iou,
        )

    def preview(self, model: torch.nn.Module, data: FitData, seen: PreviewPredictions) -> tuple[ValidationSample, ...]:
        """The preview samples with their predictions: those the validation pass made for the same
        images when it met them (a whole extra inference of 3D volumes cost a short fit seconds),
        else a pass of their own."""
        images, masks = data.preview
        found = seen.predictions()
        predictions = found if found is not None else self.logits(model, images.to(self.where)).argmax(1).cpu()
        return tuple(
            ValidationSample(image=i.numpy(), mask=m.numpy(), prediction=p.numpy())
            for i, m, p in zip(images, masks, predictions)
        )


class PreviewPredictions:
    """Collects the validation pass's predictions for the preview images, matched element for
    element in the order they come (an unshuffled validation split begins with them); any mismatch
    (transforms, padding, another order) leaves the preview to a pass of its own."""

    def __init__(self, images: torch.Tensor):
        self.images, self.lost = images, len(images) == 0
        self.found: list[torch.Tensor] = []

    def take(self, images: torch.Tensor, predictions: torch.Tensor) -> None:
        for image, prediction in zip(images, predictions):
            if self.lost or len(self.found) == len(self.images):
                return
            wanted = self.images[len(self.found)]
            if image.shape != wanted.shape or not torch.equal(image.detach().cpu(), wanted):
                self.lost = True
                return
            self.found.append(prediction.cpu())

    def predictions(self) -> torch.Tensor | None:
        complete = not self.lost and len(self.found) == len(self.images)
        return torch.stack(self.found) if complete else None
