"""MONAI's own engines tracked by segtrack's plugins: a ``SupervisedTrainer`` with a
``SupervisedEvaluator`` (sliding-window Dice on whole volumes), as MONAI's bundles run them, plus
``SegtrackHandler``. Ignite's ``Checkpoint`` keeps the handler's state, so ``--resume`` continues
the same MLflow run.

    python examples/monai_engine.py [--epochs 3] [--resume checkpoints/checkpoint_3.pt] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from segtrack import load_settings
from segtrack.integrations.ignite import SegtrackHandler


def blobs(count: int, size: int = 32, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """3D volumes, channel first, with two bright balls each; the label marks the balls."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"))
    items = []
    for _ in range(count):
        label = np.zeros((size,) * 3, np.float32)
        for _ in range(2):
            centre, radius = rng.uniform(8, size - 8, 3), rng.uniform(3, 6)
            label[((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius**2] = 1
        image = label + rng.normal(0, 0.4, label.shape).astype(np.float32)
        items.append({"image": image[None], "label": label[None]})
    return items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--resume", help="a checkpoint Ignite's Checkpoint wrote here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a segtrack setting")
    args = parser.parse_args()
    try:
        from ignite.engine import Events
        from ignite.handlers import Checkpoint, DiskSaver
        from monai.data import DataLoader, Dataset
        from monai.engines import SupervisedEvaluator, SupervisedTrainer
        from monai.handlers import MeanDice, ValidationHandler, from_engine
        from monai.inferers import SimpleInferer, SlidingWindowInferer
        from monai.losses import DiceLoss
        from monai.networks.nets import UNet
        from monai.transforms import AsDiscreted, Compose, RandFlipd
    except ImportError:
        print("this example needs MONAI and pytorch-ignite: pip install --no-deps monai; pip install pytorch-ignite")
        return 0

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    flips = Compose([RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0)])
    flips.set_random_state(seed=0)
    train = DataLoader(Dataset(blobs(12, seed=1), transform=flips), batch_size=4, shuffle=True)
    val = DataLoader(Dataset(blobs(4, seed=2)), batch_size=2)
    post = Compose([AsDiscreted(keys="pred", threshold=0.0)])

    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=val,
        network=net,
        inferer=SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=4, overlap=0.25, mode="gaussian"),
        postprocessing=post,
        key_val_metric={"val_dice": MeanDice(include_background=True, output_transform=from_engine(["pred", "label"]))},
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=args.epochs,
        train_data_loader=train,
        network=net,
        optimizer=optimizer,
        loss_function=DiceLoss(sigmoid=True),
        inferer=SimpleInferer(),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True)],
    )
    tracking = SegtrackHandler(load_settings(overrides=args.set), evaluator=evaluator, run_name="monai-engine")
    saver = Checkpoint(
        {"trainer": trainer, "net": net, "optimizer": optimizer, "segtrack": tracking},
        DiskSaver("checkpoints", require_empty=False),
        n_saved=1,
    )
    best = Checkpoint(
        {"net": net},
        DiskSaver("checkpoints", require_empty=False),
        filename_prefix="best",
        score_function=lambda engine: evaluator.state.metrics.get("val_dice", 0.0),
        score_name="val_dice",
        n_saved=1,
    )
    tracking.checkpoints = (saver, best)
    tracking.attach(trainer)  # after the ValidationHandler: its epoch's validation has run when epoch_end fires
    trainer.add_event_handler(Events.EPOCH_COMPLETED, best)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, saver)
    if args.resume:
        Checkpoint.load_objects(
            {"trainer": trainer, "net": net, "optimizer": optimizer, "segtrack": tracking}, args.resume
        )
        trainer.state.max_epochs = args.epochs  # the checkpoint holds the old limit: without this Ignite starts over
    trainer.run()
    dice = evaluator.state.metrics.get("val_dice", float("nan"))
    print(f"monai engine finished {trainer.state.epoch} epoch(s): val_dice {dice:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
