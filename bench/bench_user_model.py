"""SegmentationTrainer with a user's model and DataLoaders vs a hand-written loop over the same
model and loaders (target <= 1.03x), with the default recipe and with gradient accumulation (2) and
clipping on both sides. On CUDA, when present, the same again with AMP.

The user model is not segtrack's (a plain encoder-decoder returning a dict, like torchvision's);
the data is a map-style Dataset of MONAI-style dict samples behind ready DataLoaders. Both sides
train, validate with Dice each epoch and save a checkpoint each epoch; rounds interleave the two
and the ratio is of medians. ``python bench/bench_user_model.py``
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
from benchlib import interleaved, median, report
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segtrack.config.settings import load_settings
from segtrack.loop.losses import ce_dice
from segtrack.loop.metrics import ConfusionCounts
from segtrack.loop.trainer import SegmentationTrainer
from segtrack.plugins.manager import get_plugin_manager

EPOCHS, TRAIN, VAL, SIZE, BATCH = 5, 216, 72, 64, 8


class EncoderDecoder(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(width * 2),
            nn.ReLU(),
        )
        self.decode = nn.Sequential(
            nn.ConvTranspose2d(width * 2, width, 2, stride=2), nn.ReLU(), nn.Conv2d(width, 3, 1)
        )

    def forward(self, x):
        return {"out": self.decode(self.encode(x))}


class DictSamples(Dataset):
    def __init__(self, count: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.labels = (
            torch.randint(0, 3, (count, 1, SIZE // 8, SIZE // 8), generator=generator)
            .repeat_interleave(8, -1)
            .repeat_interleave(8, -2)
        )
        self.images = self.labels.float().repeat(1, 3, 1, 1) / 2 + 0.2 * torch.randn(
            count, 3, SIZE, SIZE, generator=generator
        )

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"image": self.images[index], "label": self.labels[index]}


def loaders():
    torch.manual_seed(0)
    return (
        DataLoader(DictSamples(TRAIN, 1), batch_size=BATCH, shuffle=True),
        DataLoader(DictSamples(VAL, 2), batch_size=BATCH),
    )


def trainer_fit(workdir: str, device: str, accumulate: int = 1, clip: float = 0.0) -> None:
    train, val = loaders()
    settings = load_settings(
        overrides=[
            f"train.epochs={EPOCHS}",
            "export.enabled=false",
            "train.scheduler='constant'",
            f"train.device='{device}'",
            f"checkpoint.dir='{workdir}/trainer'",
            f"train.accumulate={accumulate}",
            f"train.clip_grad_norm={clip}",
        ]
    )
    manager = get_plugin_manager(settings, autoload=False, disabled=["progress"])
    SegmentationTrainer(settings, model=EncoderDecoder(), train_data=train, val_data=val, plugin_manager=manager).fit()


def hand_loop(workdir: str, device: str, accumulate: int = 1, clip: float = 0.0) -> None:
    train, val = loaders()
    model = EncoderDecoder().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=1e-4)
    amp = device == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    os.makedirs(f"{workdir}/hand", exist_ok=True)
    for epoch in range(EPOCHS):
        model.train()
        for index, batch in enumerate(train):
            x, y = batch["image"].to(device), batch["label"][:, 0].long().to(device)
            with torch.autocast(device_type=device, dtype=torch.float16, enabled=amp):
                loss = ce_dice(model(x)["out"], y, 1.0)
            scaler.scale(loss / accumulate).backward()
            if (index + 1) % accumulate and index + 1 < len(train):
                continue
            if clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        counts = ConfusionCounts(3, torch.device(device))
        with torch.no_grad():
            for batch in val:
                x, y = batch["image"].to(device), batch["label"][:, 0].long().to(device)
                with torch.autocast(device_type=device, dtype=torch.float16, enabled=amp):
                    logits = model(x)["out"]
                ce_dice(logits.float(), y, 1.0)
                counts.update(logits.argmax(1), y)
        counts.mean_foreground()
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
            f"{workdir}/hand/last.pt",
        )


def compare(device: str, rounds: int, accumulate: int = 1, clip: float = 0.0) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        trainer_fit(workdir, device, accumulate, clip), hand_loop(workdir, device, accumulate, clip)  # warm-up
        times = interleaved(
            {
                "trainer": lambda: trainer_fit(workdir, device, accumulate, clip),
                "hand": lambda: hand_loop(workdir, device, accumulate, clip),
            },
            rounds=rounds,
        )
    return median(times["trainer"]), median(times["hand"])


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    cases = [(device, 1, 0.0) for device in devices] + [("cpu", 2, 1.0)]
    for device, accumulate, clip in cases:
        t, h = compare(device, rounds, accumulate, clip)
        amp = " + AMP" if device == "cuda" else ""
        amp += f" + accumulate {accumulate} + clip {clip:g}" if accumulate > 1 else ""
        rows += [
            (f"{device}{amp}: SegmentationTrainer.fit", f"{t:.3f} s", ""),
            (f"{device}{amp}: hand-written loop", f"{h:.3f} s", ""),
            (
                f"{device}{amp}: ratio trainer/hand",
                f"{t / h:.3f}x",
                f"target <= 1.03x (median of {rounds} interleaved rounds)",
            ),
        ]
    if "cuda" not in devices:
        rows.append(("cuda + AMP", "not measured", "no CUDA device on this machine"))
    report(
        f"user model + DataLoaders vs hand-written loop, {EPOCHS} epochs, {TRAIN} train / {VAL} val {SIZE}x{SIZE}, "
        "whole fit incl. settings, plugin manager, fingerprints, checkpoints (python bench/bench_user_model.py)",
        rows,
    )


if __name__ == "__main__":
    main()
