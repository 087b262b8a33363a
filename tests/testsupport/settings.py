"""Settings for fits that take a fraction of a second, one list per suite.

Each suite has its own because its tests were tuned to it: the MLflow suite fits 3 epochs (so a
best epoch differs from the last) and logs every step; the analytics suite trains a narrower model
on fewer samples and ships no overlays or checkpoints."""

from __future__ import annotations


def tiny(epochs: int = 2, num_samples: int = 16, width: int = 4) -> list[str]:
    """Overrides for a small UNet on a few 16x16 synthetic images, no ONNX export."""
    return [
        f"train.epochs={epochs}",
        "train.batch_size=4",
        "train.lr=0.01",
        f"data.num_samples={num_samples}",
        "data.image_size=16",
        f"model.width={width}",
        "model.depth=1",
        "export.enabled=false",
    ]


# core and reliability suites
TINY = tiny()

# the mlflow plugin's suite
TINY_MLFLOW = [*tiny(epochs=3), "mlflow.drain_timeout=60", "mlflow.log_every_n_steps=1", "mlflow.shipper_linger=30"]

# the analytics plugin's suite (fits tracked by the mlflow plugin)
TINY_ANALYTICS = [
    *tiny(num_samples=12, width=2),
    "mlflow.drain_timeout=60",
    "mlflow.sample_overlays=0",
    "mlflow.checkpoint_policy='none'",
]


def cli_sets(uri: str, *extra: str) -> list[str]:
    """``--set`` arguments for a TINY_ANALYTICS fit tracked at ``uri``, plus ``extra`` settings."""
    return [a for s in [*TINY_ANALYTICS, f"mlflow.tracking_uri='{uri}'", *extra] for a in ("--set", s)]
