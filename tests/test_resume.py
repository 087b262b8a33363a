"""Checkpoints: atomic, safe to load, and a resumed fit equals an uninterrupted one on CPU."""

from __future__ import annotations

import pytest
import torch

from segtrack import CheckpointError
from testsupport.plugins import RaiseAt, Recorder


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_resumed_fit_ends_with_the_same_weights(trainer_factory, tmp_path):
    straight = trainer_factory("train.epochs=4", "checkpoint.dir='straight'").fit()

    interrupted = trainer_factory(
        "train.epochs=4", "checkpoint.dir='resumed'", plugins=[RaiseAt(2, KeyboardInterrupt())]
    )
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["epoch"] == 1

    recorder = Recorder()
    resumed = trainer_factory("train.epochs=4", "checkpoint.dir='resumed'", plugins=[recorder]).fit(resume="auto")
    run = recorder.calls[[n for n, _ in recorder.calls].index("fit_start")][1]["run"]
    assert run.start_epoch == 2 and run.resumed_from.endswith("last.pt")
    assert [kw["epoch"] for n, kw in recorder.calls if n == "epoch_start"] == [2, 3]
    assert resumed.epochs_completed == 4
    assert resumed.best_value == straight.best_value
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_plugin_state_rides_in_checkpoints(trainer_factory):
    first = Recorder()
    trainer_factory("train.epochs=1", plugins=[first]).fit()
    second = Recorder()
    trainer_factory("train.epochs=2", plugins=[second]).fit(resume="auto")
    restored = next(kw["state"] for n, kw in second.calls if n == "load_state_dict")
    assert restored == {"count": 1}
    assert second.names().index("load_state_dict") < second.names().index("fit_start")


def test_resume_auto_without_checkpoint_starts_fresh(trainer_factory):
    result = trainer_factory().fit(resume="auto")
    assert result.epochs_completed == 2


def test_checkpoint_write_leaves_no_temp_files(trainer_factory, tmp_path):
    trainer_factory("checkpoint.keep=1").fit()
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["best.pt", "epoch-0002.pt", "last.pt"]  # the second epoch, counted from 1


class Evil:
    def __reduce__(self):
        return (exec, ("open('pwned', 'w').close()",))


@pytest.mark.parametrize(
    "case, expected",
    [
        ("corrupt", "corrupt or truncated"),
        ("truncated", "corrupt or truncated"),
        ("pickle", "refused without running it.*Unsupported global"),
        ("foreign", "not a segtrack checkpoint"),
        ("other_model", "from another model"),
        ("missing", "does not exist"),
    ],
)
def test_bad_checkpoints_are_refused(trainer_factory, tmp_path, case, expected):
    path = tmp_path / "bad.pt"
    if case == "corrupt":
        path.write_bytes(b"not a checkpoint at all")
    elif case == "truncated":
        trainer_factory("train.epochs=1").fit()
        data = (tmp_path / "checkpoints" / "last.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "pickle":
        torch.save({"format": "segtrack.checkpoint", "payload": Evil()}, path)
    elif case == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    elif case == "other_model":
        trainer_factory("train.epochs=1", "model.width=2", "checkpoint.dir='other'").fit()
        path = tmp_path / "other" / "last.pt"
    trainer = trainer_factory()
    with pytest.raises(CheckpointError, match=expected):
        trainer.fit(resume=str(path))
    assert not (tmp_path / "pwned").exists()


def test_dataloader_workers_give_the_same_fit(trainer_factory, tmp_path):
    trainer_factory("checkpoint.dir='inline'").fit()
    trainer_factory("checkpoint.dir='workers'", "train.num_workers=1").fit()
    a, b = _weights(tmp_path / "inline" / "last.pt"), _weights(tmp_path / "workers" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
