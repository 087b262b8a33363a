"""A LightningModule tracked by segtrack's plugins: add ``SegtrackCallback`` to the Trainer. What the
module logs becomes epoch metrics, its hparams become params, the best checkpoint becomes an ONNX
model, and ``--resume`` (Lightning's ``ckpt_path``) continues the same MLflow run.

    python examples/lightning_module.py [--epochs 4] [--resume checkpoints/last.ckpt] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from segtrack import load_settings
from segtrack.integrations.lightning import SegtrackCallback


def squares(count: int, size: int = 32, seed: int = 0) -> TensorDataset:
    """Noisy images with one bright square each; the mask marks the square (class 1)."""
    g = torch.Generator().manual_seed(seed)
    images, masks = torch.zeros(count, 1, size, size), torch.zeros(count, size, size, dtype=torch.long)
    for i in range(count):
        y, x, side = (
            *torch.randint(2, size - 12, (2,), generator=g).tolist(),
            int(torch.randint(4, 10, (1,), generator=g)),
        )
        masks[i, y : y + side, x : x + side] = 1
    images[:, 0] = masks.float() + 0.3 * torch.randn(count, size, size, generator=g)
    return TensorDataset(images, masks)


class Segmenter(pl.LightningModule):
    def __init__(self, width: int = 16, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        images, masks = batch
        loss = nn.functional.cross_entropy(self(images), masks)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        images, masks = batch
        logits = self(images)
        predicted, truth = logits.argmax(1) == 1, masks == 1
        dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()).clamp(min=1)
        self.log("val_loss", nn.functional.cross_entropy(logits, masks))
        self.log("val_dice", dice)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resume", help="a Lightning checkpoint (e.g. checkpoints/last.ckpt)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a segtrack setting")
    args = parser.parse_args()

    pl.seed_everything(0, verbose=False)
    train = DataLoader(squares(48, seed=1), batch_size=8, shuffle=True)
    val = DataLoader(squares(16, seed=2), batch_size=8)
    best = ModelCheckpoint(dirpath="checkpoints", monitor="val_dice", mode="max", save_last=True)
    tracking = SegtrackCallback(load_settings(overrides=args.set), run_name="lightning")
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[best, tracking],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Segmenter(), train, val, ckpt_path=args.resume)
    result = tracking.result  # the fit's FitResult (None on ranks other than 0)
    if result is not None:
        print(f"lightning fit {result.status}: best val_dice {result.best_value:.4f} at epoch {result.best_epoch + 1}")


if __name__ == "__main__":
    main()
