"""The training loop: the trainer, its state, one training step, losses, recipes, validation metrics."""
