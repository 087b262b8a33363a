"""The README's examples run as a user runs them (one or two epochs): a failing example is a
broken promise in the documentation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    "script, args, says",
    [
        ("own_model_2d.py", ["--set", "train.epochs=2"], "completed: best val_fg_f1"),
        ("own_model_3d.py", ["--folds", "2", "--set", "train.epochs=1"], "fold 1: completed"),
        ("own_loop.py", ["--epochs", "2"], "own loop completed: best val_dice"),
        ("lightning_module.py", ["--epochs", "2"], "lightning fit completed: best val_dice"),
        ("monai_engine.py", ["--epochs", "1"], "monai engine finished 1 epoch(s)"),
    ],
)
def test_an_example_runs(tmp_path, script, args, says):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args, "--set", "plugins.autoload=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert says in out.stdout, out.stdout[-2000:]
