"""A fit in a loop that is not segtrack's (a hand-written loop through FitSession, or Lightning with
SegtrackCallback), with a plugin that raises at every epoch end and an optional SIGKILL of the
process right after an epoch's metrics were handed to the plugins (before its checkpoint).

    python any_loop_chaos.py --loop own|lightning --epochs 6 [--kill-after-epoch 2]
    (resumes from the loop's last checkpoint when there is one)
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from segtrack import hookimpl, load_settings

SETTINGS = ["mlflow.log_every_n_steps=1", "mlflow.sample_overlays=0", "plugins.disabled=['progress', 'analytics']"]


class Broken:
    name = "broken"

    @hookimpl
    def epoch_end(self, epoch):
        raise RuntimeError("a plugin bug")


class KillAfter:
    """SIGKILLs this process once ``epoch_end`` of ``epoch`` returned to every other plugin."""

    name = "kill_after"

    def __init__(self, epoch: int):
        self.epoch = epoch

    @hookimpl(trylast=True)
    def epoch_end(self, epoch):
        if epoch.epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def data(count: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, 16, 16, dtype=torch.long)
    for i in range(count):
        y, x = torch.randint(0, 10, (2,), generator=g).tolist()
        masks[i, y : y + 6, x : x + 6] = 1
    return TensorDataset(masks[:, None].float() + 0.3 * torch.randn(count, 1, 16, 16, generator=g), masks)


def network() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))


def dice(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    predicted, truth = logits.argmax(1) == 1, masks == 1
    return 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()).clamp(min=1)


def own_loop(epochs: int, plugins: list) -> None:
    from segtrack import FitSession

    torch.manual_seed(0)
    model, train, val = network(), data(32, 1), data(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    saved = torch.load("last.pt", weights_only=False) if Path("last.pt").is_file() else None
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    settings = load_settings(overrides=SETTINGS)
    resume = saved["segtrack"] if saved else None
    with FitSession(settings, plugins, model=model, run_name="own", resume_state=resume, train_data=train) as fit:
        for epoch in range(fit.start_epoch, epochs):
            torch.manual_seed(epoch)
            for images, masks in DataLoader(train, batch_size=8, shuffle=True):
                loss = nn.functional.cross_entropy(model(images), masks)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                fit.batch_end(fit.global_step + 1, loss)
            with torch.no_grad():
                logits = model(val.tensors[0])
            metrics = {"train_loss": loss, "val_dice": dice(logits, val.tensors[1])}
            is_best = fit.epoch_end(epoch, metrics)
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "segtrack": fit.state_dict()}
            torch.save(state, "last.pt.tmp")
            os.replace("last.pt.tmp", "last.pt")
            fit.checkpoint_saved("last.pt", epoch=epoch, is_best=is_best)
            if is_best:
                torch.save(model.state_dict(), "best.pt")
        fit.export(val.tensors[0][:1], weights="best.pt")


def lightning_loop(epochs: int, plugins: list) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from segtrack.integrations.lightning import SegtrackCallback

    class Module(pl.LightningModule):
        def __init__(self, lr: float = 0.05):
            super().__init__()
            self.save_hyperparameters()
            self.net = network()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_dice", dice(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    pl.seed_everything(0, verbose=False)
    last = Path("ckpt/last.ckpt")
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[
            ModelCheckpoint(dirpath="ckpt", monitor="val_dice", mode="max", save_last=True),
            SegtrackCallback(load_settings(overrides=SETTINGS), plugins, run_name="lightning"),
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        Module(),
        DataLoader(data(32, 1), batch_size=8),
        DataLoader(data(8, 2), batch_size=8),
        ckpt_path=str(last) if last.is_file() else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loop", choices=["own", "lightning"], required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--kill-after-epoch", type=int)
    args = parser.parse_args()
    plugins: list = [Broken()]
    if args.kill_after_epoch is not None:
        plugins.append(KillAfter(args.kill_after_epoch))
    (own_loop if args.loop == "own" else lightning_loop)(args.epochs, plugins)


if __name__ == "__main__":
    main()
