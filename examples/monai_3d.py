"""3D at real size with MONAI's own parts: a DynUNet with deep supervision, MONAI transforms cropping
4 foreground/background-balanced patches per volume (``RandCropByPosNegLabeld(num_samples=4)``),
MONAI's Dice-CE loss, nnU-Net's SGD + poly recipe, and sliding-window validation of whole volumes.

The volumes are thin tubes in noise (a stand-in for vessels in microscopy), made here so the example
needs no download.

    python examples/monai_3d.py [--set train.epochs=20 ...]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from segtrack import SegmentationTrainer, load_settings

PATCH = (32, 32, 32)


def vessel_volumes(count: int, shape=(40, 80, 80), seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``{"image", "label"}`` dicts, channel first, a few random straight tubes of radius 2-3 per volume."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")).reshape(3, -1).T
    items = []
    for _ in range(count):
        label = np.zeros(int(np.prod(shape)), np.float32)
        for _ in range(4):
            start, direction = rng.uniform(0, shape), rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            offset = grid - start
            distance = np.linalg.norm(offset - np.outer(offset @ direction, direction), axis=1)
            label[distance < rng.uniform(2, 3)] = 1
        label = label.reshape(1, *shape)
        image = (label * 0.8 + rng.normal(0, 0.35, label.shape)).astype(np.float32)
        items.append({"image": image, "label": label})
    return items


def dynunet():
    """MONAI's DynUNet with deep supervision, ~1M parameters: small enough for a laptop CPU."""
    from monai.networks.nets import DynUNet

    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        kernel_size=[3, 3, 3, 3],
        strides=[1, 2, 2, 2],
        upsample_kernel_size=[2, 2, 2],
        filters=[16, 32, 64, 128],  # MONAI's default starts at 32
        deep_supervision=True,
        deep_supr_num=2,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    try:
        from monai.data import Dataset
        from monai.losses import DiceCELoss
        from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd
    except ImportError:
        print("this example needs MONAI: pip install --no-deps monai (it keeps your torch)", file=sys.stderr)
        return 0

    crops = Compose(
        [
            RandCropByPosNegLabeld(
                keys=["image", "label"], label_key="label", spatial_size=PATCH, pos=1, neg=1, num_samples=4
            ),
            RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
        ]
    )
    train = Dataset(vessel_volumes(6), transform=crops)  # each item: a list of 4 patch dicts
    val = Dataset(vessel_volumes(2, seed=1))  # whole volumes, validated window by window
    torch.manual_seed(0)  # a network passed in code keeps its own initial weights: seed before building it
    network = dynunet()
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_ce(logits, target.clamp_min(0).unsqueeze(1))  # -1 marks ignored pixels; MONAI knows none

    settings = load_settings(
        overrides=[
            "run.name=monai-3d",
            "data.dims=3",
            "data.num_classes=2",
            "data.class_names=['background','vessel']",
            "train.epochs=4",
            "train.batch_size=1",  # one volume's 4 patches per batch
            "train.optimizer='sgd'",
            "train.momentum=0.99",
            "train.nesterov=true",
            "train.lr=0.01",
            "train.weight_decay=3e-5",
            "train.scheduler='poly'",
            "train.clip_grad_norm=12",
            "train.deep_supervision=true",
            "infer.roi_size=[32, 32, 32]",
            "infer.overlap=0.5",
            "infer.mode='gaussian'",
            "checkpoint.monitor=val_dice_vessel",
            *args.overrides,
        ]
    )
    result = SegmentationTrainer(settings, model=network, train_data=train, val_data=val, loss=loss).fit()
    print(f"{result.status}: best val_dice_vessel {result.best_value:.3f} at epoch {result.best_epoch + 1}")
    return 0 if result.status in ("completed", "stopped") else 1


if __name__ == "__main__":
    raise SystemExit(main())
