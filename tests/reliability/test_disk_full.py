"""A checkpoint write that the file system refuses (a full disk, a quota): the fit ends `failed`
with one sentence naming the folder, and the checkpoints written before stay intact and loadable.

The refusal is real: after epoch 0's checkpoints, a plugin lowers RLIMIT_FSIZE in the training
process, so the kernel fails the next checkpoint write with EFBIG, as a full disk fails it with
ENOSPC (both reach the trainer as OSError from the same write)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    from segtrack import hookimpl
    from segtrack.cli import main
    import segtrack.plugins.manager as plugins

    class FillDisk:
        name = "fill-disk"

        @hookimpl
        def checkpoint_saved(self, checkpoint):
            if checkpoint.kind == "last" and checkpoint.epoch == 0:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write returns EFBIG, not a signal
                resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    real = plugins.get_plugin_manager
    plugins.get_plugin_manager = lambda settings, *a, **k: real(settings, [FillDisk()], *a, **k)
    sys.exit(main(sys.argv[1:]))
""")


def test_a_full_disk_during_a_checkpoint_write_fails_the_fit_in_one_sentence(tmp_path, report_row):
    (tmp_path / "fill.py").write_text(SCRIPT)
    sets = [
        "train.epochs=3",
        "data.num_samples=16",
        "data.image_size=16",
        "model.width=16",
        "model.depth=1",
        "export.enabled=false",
        "plugins.autoload=false",
    ]
    out = subprocess.run(
        [sys.executable, "fill.py", "train", *[a for s in sets for a in ("--set", s)]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr
    assert (
        "segtrack: error: cannot write best.pt in checkpoints" in out.stderr
        or "segtrack: error: cannot write last.pt in checkpoints" in out.stderr
    ), out.stderr
    assert "intact" in out.stderr and "Traceback" not in out.stderr
    assert "fit failed after" in out.stderr
    for name in ("last.pt",):
        payload = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert payload["epoch"] == 0
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
    report_row(
        scenario="checkpoint write refused by the file system (EFBIG via RLIMIT_FSIZE)",
        runs=1,
        faults=1,
        expected="failed, epoch-0 checkpoints intact",
        found="failed, intact",
        duplicates="-",
        result="pass",
    )
