"""Your own training loop, tracked by segtrack's plugins through ``FitSession``: plain PyTorch,
nothing of segtrack's trainer. Kill it at any time and run it again with ``--resume``: the same
MLflow run continues.

    python examples/own_loop.py [--epochs 4] [--resume last.pt] [--set mlflow.tracking_uri=...]
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from segtrack import FitSession, load_settings


def discs(count: int, size: int = 32, seed: int = 0) -> TensorDataset:
    """Grey images with one bright disc each; the mask marks the disc (class 1)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(count):
        cy, cx = torch.randint(8, size - 8, (2,), generator=g).tolist()
        r = int(torch.randint(3, 7, (1,), generator=g))
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).long()
        images.append((mask.float() + 0.3 * torch.randn(size, size, generator=g))[None])
        masks.append(mask)
    return TensorDataset(torch.stack(images), torch.stack(masks))


def dice(logits: torch.Tensor, masks: torch.Tensor) -> float:
    predicted = logits.argmax(1) == 1
    truth = masks == 1
    return float(2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()).clamp(min=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resume", help="a checkpoint this script wrote (e.g. last.pt)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a segtrack setting")
    args = parser.parse_args()

    torch.manual_seed(0)
    train, val = discs(48, seed=1), discs(16, seed=2)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(train, batch_size=8, shuffle=True)
    saved = torch.load(args.resume, weights_only=False) if args.resume else None
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])

    settings = load_settings(overrides=args.set)
    with FitSession(
        settings,
        model=model,
        run_name="own-loop",
        resume_state=saved["segtrack"] if saved else None,
        train_data=train,
        val_data=val,
        params={"lr": 3e-3, "batch_size": 8},
        epochs=args.epochs,
        optimizer=optimizer,
    ) as fit:
        for epoch in range(fit.start_epoch, args.epochs):
            model.train()
            losses = []
            for images, masks in loader:
                loss = nn.functional.cross_entropy(model(images), masks)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                fit.batch_end(fit.global_step + 1, loss.item())
            model.eval()
            with torch.no_grad():
                images, masks = val.tensors
                logits = model(images)
                val_loss, val_dice = nn.functional.cross_entropy(logits, masks).item(), dice(logits, masks)
            is_best = fit.epoch_end(
                epoch, {"train_loss": sum(losses) / len(losses), "val_loss": val_loss, "val_dice": val_dice}
            )
            # written whole, then renamed: a kill never leaves half a checkpoint
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "segtrack": fit.state_dict()}
            torch.save(state, "last.pt.tmp")
            os.replace("last.pt.tmp", "last.pt")
            fit.checkpoint_saved("last.pt", epoch=epoch, is_best=is_best)
            if is_best:
                torch.save(model.state_dict(), "best.pt")
            if fit.should_stop:  # a plugin asked to stop (e.g. a pruned trial)
                break
        fit.export(val.tensors[0][:1], weights="best.pt")  # the best weights as an ONNX model
    print(
        f"own loop {fit.result.status}: best val_dice {fit.result.best_value:.4f} at epoch {fit.result.best_epoch + 1}"
    )


if __name__ == "__main__":
    main()
