"""SegmentationTrainer with a user's model and DataLoaders vs a hand-written loop over the same
model and loaders, with the default recipe and with gradient accumulation (2) and clipping on both
sides. On CUDA, when present, the same again with AMP.

Two lengths: a short fit (5 epochs, ~1-5 s), where the trainer's set-up (settings, plugin manager,
fingerprints, checkpoint folders) weighs in; and a fit of at least ``--long-seconds`` (default 10 s;
the epochs are chosen from the short hand-written fit's pace), where the ratio shows what training
through the trainer costs (target <= 1.02x). Each figure is the median of interleaved rounds, of
wall time and of the process's CPU time (less moved by other programs on the machine); torch runs
one CPU thread unless ``--threads`` says otherwise.

The user model is not segtrack's (a plain encoder-decoder returning a dict, like torchvision's);
the data is a map-style Dataset of MONAI-style dict samples behind ready DataLoaders. Both sides
train, validate with Dice each epoch and save a checkpoint each epoch.
``python bench/bench_user_model.py [ROUNDS] [--long-seconds S] [--threads N] [--skip-short]``
(``--long-seconds 0``: short fits only)
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable

import torch
from benchlib import interleaved, median, report
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segtrack.config.settings import load_settings
from segtrack.loop.losses import ce_dice
from segtrack.loop.metrics import ConfusionCounts
from segtrack.loop.trainer import SegmentationTrainer
from segtrack.plugins.manager import get_plugin_manager

EPOCHS, TRAIN, VAL, SIZE, BATCH = 5, 216, 72, 64, 8  # EPOCHS: the short fit


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


def trainer_fit(workdir: str, device: str, epochs: int = EPOCHS, accumulate: int = 1, clip: float = 0.0) -> None:
    train, val = loaders()
    settings = load_settings(
        overrides=[
            f"train.epochs={epochs}",
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


def hand_loop(workdir: str, device: str, epochs: int = EPOCHS, accumulate: int = 1, clip: float = 0.0) -> None:
    train, val = loaders()
    model = EncoderDecoder().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=1e-4)
    amp = device == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    os.makedirs(f"{workdir}/hand", exist_ok=True)
    for epoch in range(epochs):
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


class Case:
    """One comparison: the device, the fit's epochs and the recipe; both sides' wall and CPU times."""

    def __init__(self, device: str, epochs: int, accumulate: int = 1, clip: float = 0.0):
        self.device, self.epochs, self.accumulate, self.clip = device, epochs, accumulate, clip
        self.cpu: dict[str, list[float]] = {"trainer": [], "hand": []}
        self.wall: dict[str, list[float]] = {}

    def run(self, rounds: int, warm_up: bool = True) -> Case:
        with tempfile.TemporaryDirectory() as workdir:
            os.chdir(workdir)
            fits: dict[str, Callable[[], object]] = {
                "trainer": self._cpu_timed("trainer", lambda: trainer_fit(workdir, *self._args())),
                "hand": self._cpu_timed("hand", lambda: hand_loop(workdir, *self._args())),
            }
            if warm_up:
                fits["trainer"](), fits["hand"]()
                self.cpu = {"trainer": [], "hand": []}
            self.wall = interleaved(fits, rounds=rounds)
        return self

    def rows(self, rounds: int, target: str) -> list[tuple[str, str, str]]:
        name = self.device + (" + AMP" if self.device == "cuda" else "")
        name += f" + accumulate {self.accumulate} + clip {self.clip:g}" if self.accumulate > 1 else ""
        name += f", {self.epochs} epochs"
        (t, h), (tc, hc) = self._medians(self.wall), self._medians(self.cpu)
        return [
            (f"{name}: SegmentationTrainer.fit", f"{t:.3f} s", f"CPU {tc:.3f} s"),
            (f"{name}: hand-written loop", f"{h:.3f} s", f"CPU {hc:.3f} s"),
            (f"{name}: trainer - hand", f"{1000 * (t - h):+.0f} ms", f"CPU {1000 * (tc - hc):+.0f} ms"),
            (f"{name}: ratio trainer/hand", f"{t / h:.3f}x", f"{target} (median of {rounds} interleaved rounds)"),
            (f"{name}: ratio of CPU times", f"{tc / hc:.3f}x", ""),
        ]

    def _args(self) -> tuple[str, int, int, float]:
        return self.device, self.epochs, self.accumulate, self.clip

    def _cpu_timed(self, side: str, fit: Callable[[], None]) -> Callable[[], None]:
        def timed() -> None:
            started = time.process_time()
            fit()
            self.cpu[side].append(time.process_time() - started)

        return timed

    @staticmethod
    def _medians(times: dict[str, list[float]]) -> tuple[float, float]:
        return median(times["trainer"]), median(times["hand"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", nargs="?", type=int, default=5)
    parser.add_argument("--long-seconds", type=float, default=10.0, help="the long fit's least length (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip-short", action="store_true", help="the long fit only")
    args = parser.parse_args()
    if args.threads:
        # one thread by default: on a shared machine a second one waits on whatever else runs there
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows: list[tuple[str, str, str]] = []
    short = [] if args.skip_short else [Case(device, EPOCHS) for device in devices] + [Case("cpu", EPOCHS, 2, 1.0)]
    for case in short:
        rows += case.run(args.rounds).rows(args.rounds, "target <= 1.03x (set-up weighs in)")
    if args.long_seconds > 0:
        # as many epochs as make the hand-written loop last long_seconds at the short fit's pace
        pace = median(short[0].wall["hand"] if short else Case("cpu", EPOCHS).run(1).wall["hand"]) / EPOCHS
        epochs = max(EPOCHS, math.ceil(1.25 * args.long_seconds / pace))  # a margin: paces vary
        long = Case("cpu", epochs).run(args.rounds, warm_up=False)
        length = median(long.wall["hand"])
        note = "" if length >= args.long_seconds else f" (the hand-written fit took only {length:.1f} s)"
        rows += long.rows(args.rounds, f"target <= 1.02x on a >= {args.long_seconds:g} s fit{note}")
    if "cuda" not in devices:
        rows.append(("cuda + AMP", "not measured", "no CUDA device on this machine"))
    report(
        f"user model + DataLoaders vs hand-written loop, {TRAIN} train / {VAL} val {SIZE}x{SIZE}, whole fit "
        f"incl. settings, plugin manager, fingerprints, checkpoints, {torch.get_num_threads()} torch thread(s) "
        "(python bench/bench_user_model.py)",
        rows,
    )


if __name__ == "__main__":
    main()
