"""One fit of ~10 s in a loop that is not segtrack's trainer, with or without segtrack's tracking:
a hand-written loop (FitSession), Lightning (SegtrackCallback), MONAI's SupervisedTrainer
(SegtrackHandler). Run by bench_loops.py in a process of its own; prints the fit's wall seconds.

    python bench/loop_fits.py own|lightning|ignite tracked|plain EPOCHS
"""

from __future__ import annotations

import contextlib
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCHES, BATCH, SIZE = 40, 8, 64
SETTINGS = ["plugins.disabled=['progress', 'analytics', 'sweep']", "export.enabled=false"]


def data(count: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(count, SIZE, SIZE, generator=g) > 0.5).long()
    return TensorDataset(masks[:, None].float() + 0.3 * torch.randn(count, 1, SIZE, SIZE, generator=g), masks)


def network() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 1)
    )


def own(epochs: int, tracked: bool) -> None:
    from segtrack import FitSession, load_settings

    model, train, val = network(), data(BATCHES * BATCH, 1), data(16, 2)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    session = FitSession(load_settings(overrides=SETTINGS), model=model, run_name="bench-own") if tracked else None
    with session if session is not None else contextlib.nullcontext():
        for epoch in range(epochs):
            for images, masks in DataLoader(train, batch_size=BATCH, shuffle=True):
                loss = nn.functional.cross_entropy(model(images), masks)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if session is not None:
                    session.batch_end(session.global_step + 1, loss.item())
            with torch.no_grad():
                val_loss = nn.functional.cross_entropy(model(val.tensors[0]), val.tensors[1]).item()
            if session is not None:
                session.epoch_end(epoch, {"train_loss": loss.item(), "val_loss": val_loss})


def lightning(epochs: int, tracked: bool) -> None:
    import lightning.pytorch as pl

    from segtrack import load_settings
    from segtrack.integrations.lightning import SegtrackCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = network()

        def training_step(self, batch, batch_idx):
            loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 1e-3)

    callbacks = [SegtrackCallback(load_settings(overrides=SETTINGS), run_name="bench-lightning")] if tracked else []
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(
        Module(),
        DataLoader(data(BATCHES * BATCH, 1), batch_size=BATCH, shuffle=True),
        DataLoader(data(16, 2), batch_size=BATCH),
    )


def ignite(epochs: int, tracked: bool) -> None:
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import ValidationHandler

    from segtrack import load_settings
    from segtrack.integrations.ignite import SegtrackHandler

    def pairs(dataset: TensorDataset) -> list[dict]:
        return [{"image": image, "label": mask[None].float()} for image, mask in dataset]

    net = network()[:-1].append(nn.Conv2d(16, 1, 1))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(pairs(data(16, 2)), batch_size=BATCH), network=net
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=DataLoader(pairs(data(BATCHES * BATCH, 1)), batch_size=BATCH, shuffle=True),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=nn.BCEWithLogitsLoss(),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1)],
    )
    if tracked:
        SegtrackHandler(load_settings(overrides=SETTINGS), evaluator=evaluator, run_name="bench-ignite").attach(trainer)
    trainer.run()


def main() -> None:
    loop, variant, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    started, cpu = time.perf_counter(), time.process_time()
    {"own": own, "lightning": lightning, "ignite": ignite}[loop](epochs, variant == "tracked")
    print(f"{time.perf_counter() - started:.4f} {time.process_time() - cpu:.4f}")


if __name__ == "__main__":
    main()
