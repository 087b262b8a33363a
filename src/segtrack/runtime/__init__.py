"""What a fit runs on: ranks under torchrun, SIGTERM handling, atomic checkpoint files."""
