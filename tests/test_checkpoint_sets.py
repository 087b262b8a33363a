"""A fit's checkpoint files land in the background (fsync and rename off the loop's thread): in
order, complete once waited for, and a refusal met there comes back as the one sentence."""

from __future__ import annotations

import contextlib
import os

import pytest

from segtrack import CheckpointError
from segtrack.runtime import checkpoint


def _payload(epoch: int) -> dict:
    return {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "epoch": epoch}


def test_sets_land_in_order_with_links_and_pruned_snapshots(tmp_path):
    sets = checkpoint.CheckpointSets(tmp_path, keep=2)
    for epoch in range(3):
        named = sets.write(_payload(epoch), epoch, ["best", "last", "epoch"], contextlib.nullcontext)
        assert [kind for kind, _ in named] == ["best", "last", "epoch"]
    landed = sets.wait()
    assert [(kind, path.name) for kind, path, _ in landed] == [
        ("best", "best.pt"),
        ("last", "last.pt"),
        ("epoch", "epoch-0003.pt"),
    ]
    assert all(size == path.stat().st_size for _, path, size in landed)
    assert checkpoint.load(tmp_path / "last.pt", None)["epoch"] == 2
    assert os.path.samefile(tmp_path / "best.pt", tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "epoch-0002.pt", "epoch-0003.pt", "last.pt"]


def test_a_refusal_in_the_background_is_raised_by_the_next_wait(tmp_path, monkeypatch):
    sets = checkpoint.CheckpointSets(tmp_path)
    sets.write(_payload(0), 0, ["last"], contextlib.nullcontext)
    sets.wait()

    def refused(tmp, target):
        tmp.unlink()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_made_durable", refused)
    sets.write(_payload(1), 1, ["last"], contextlib.nullcontext)
    with pytest.raises(CheckpointError, match=r"cannot write last.pt in .*No space left on device.*intact"):
        sets.wait()
    assert sets.wait() == []  # reported once
    assert checkpoint.load(tmp_path / "last.pt", None)["epoch"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_a_fit_without_checkpoint_plugins_fails_on_a_refusal_met_in_the_background(
    trainer_factory, tmp_path, monkeypatch
):
    real = checkpoint._made_durable

    def refused_after_epoch_0(tmp, target):
        if checkpoint.torch.load(tmp, weights_only=True)["epoch"] == 0:
            return real(tmp, target)
        tmp.unlink()
        raise OSError(122, "Disk quota exceeded")

    monkeypatch.setattr(checkpoint, "_made_durable", refused_after_epoch_0)
    with pytest.raises(CheckpointError, match="cannot write (best|last).pt in .*Disk quota exceeded"):
        trainer_factory("train.epochs=2").fit()
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt", None)["epoch"] == 0
