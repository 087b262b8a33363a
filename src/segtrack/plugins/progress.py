"""Builtin console plugin: a progress bar on a terminal, plain lines elsewhere, one line per epoch."""

from __future__ import annotations

import os
import sys
import time

from segtrack import hookimpl

MAIN_METRICS = ("train_loss", "val_loss", "val_dice", "val_iou")


class ProgressPlugin:
    """Writes to stderr. On a TTY (and not under CI) the batch counter redraws in place."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() and not os.environ.get("CI")
        self._batches = 0
        self._epochs = 0
        self._last_draw = 0.0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    @hookimpl
    def fit_start(self, run):
        self._epochs = run.max_epochs
        fold = f" fold {run.fold + 1}/{run.num_folds}" if run.fold is not None else ""
        resumed = f", resumed at epoch {run.start_epoch + 1}" if run.resumed_from else ""
        self._write(
            f"segtrack: {run.run_name}{fold}: {run.num_train} train / {run.num_val} val samples, "
            f"{run.num_parameters:,} parameters on {run.device}{resumed}\n"
        )

    @hookimpl
    def epoch_start(self, trainer, epoch):
        self._batches = trainer.batches_per_epoch  # part of the Loop protocol every loop offers

    @hookimpl
    def train_batch_end(self, step):
        if not self.interactive:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and step.batch_index + 1 < self._batches:
            return
        self._last_draw = now
        done = step.batch_index + 1
        filled = int(24 * done / max(1, self._batches))
        self._write(
            f"\r  epoch {self._of(step.epoch)} [{'#' * filled}{'.' * (24 - filled)}] "
            f"{done}/{self._batches or '?'} loss {step.loss:.4f}"
        )

    def _of(self, epoch: int) -> str:
        return f"{epoch + 1}/{self._epochs}" if self._epochs else str(epoch + 1)

    @hookimpl
    def epoch_end(self, epoch):
        m = epoch.metrics
        best = " *" if epoch.is_best else ""
        clear = "\r\033[K" if self.interactive else ""
        # the trainer's main metrics in this order; a loop of one's own shows its first few
        shown = [k for k in MAIN_METRICS if k in m] or [k for k in m if k != "lr"][:5]
        values = "  ".join(f"{k} {m[k]:.4f}" for k in shown) + (f"  lr {m['lr']:.2e}" if "lr" in m else "")
        duration = f"  {epoch.duration_s:.1f}s" if epoch.duration_s else ""
        self._write(f"{clear}epoch {self._of(epoch.epoch)}  {values}{duration}{best}\n")

    @hookimpl
    def model_exported(self, export):
        state = "ok" if export.parity_ok else "ABOVE TOLERANCE"
        self._write(f"exported {export.path} (onnxruntime max abs diff {export.max_abs_diff:.2e}, {state})\n")

    @hookimpl
    def fit_end(self, result):
        failures = "".join(
            f"\n  plugin {f.plugin!r} failed {f.count}x in {f.hook}: {f.error}" for f in result.plugin_failures
        )
        self._write(
            f"fit {result.status} after {result.epochs_completed} epoch(s)"
            + (
                f": best {result.monitor} {result.best_value:.4f} at epoch {result.best_epoch + 1}"
                if result.best_epoch >= 0
                else f": no best {result.monitor}"
            )
            + (f", best checkpoint {result.best_checkpoint}" if result.best_checkpoint else "")
            + failures
            + "\n"
        )

    @hookimpl
    def cross_validation_end(self, result):
        lines = [f"cross-validation {result.cv_id}: {len(result.folds)}/{result.num_folds} folds"]
        for name, stats in result.summary.items():
            lines.append(
                f"  {name:<10} mean {stats['mean']:.4f}  std {stats['std']:.4f}  "
                f"min {stats['min']:.4f}  max {stats['max']:.4f}"
            )
        self._write("\n".join(lines) + "\n")
