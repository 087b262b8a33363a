"""What a trainer's set-up keeps between fits: file digests by the files' state (a changed file is
read again, never served an old digest) and the installed entry points by the import path's state."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest

from segtrack.data import digests, file_digests, folder
from segtrack.data.folder import FolderDataset
from segtrack.plugins import manager

TICK_S = 0.05  # longer than a filesystem timestamp tick: a later write gets a later time


@pytest.fixture
def reads(monkeypatch):
    """Counts file reads by input_digest and by the folder dataset; nothing kept from before;
    files count as settled at once (the 2 s guard has a test of its own)."""
    file_digests.forget()
    monkeypatch.setattr(file_digests, "RECENT_NS", 0)
    counted = {"input": 0, "folder": 0}
    feed_file, files_sha256 = digests._feed_file, folder._files_sha256

    def counting_feed(digest, path):
        counted["input"] += 1
        feed_file(digest, path)

    def counting_sha(*paths):
        counted["folder"] += 1
        return files_sha256(*paths)

    monkeypatch.setattr(digests, "_feed_file", counting_feed)
    monkeypatch.setattr(folder, "_files_sha256", counting_sha)
    yield counted
    file_digests.forget()


def test_an_unchanged_file_is_read_once_and_a_rewritten_one_again(tmp_path, reads):
    image = tmp_path / "a.nii"
    image.write_bytes(b"A" * 64)
    item = {"image": str(image), "label": 3}
    first = digests.input_digest(item)
    assert digests.input_digest(dict(item)) == first and reads["input"] == 1
    # same size, same modification time set back by hand: the status-change time still differs
    before = image.stat().st_mtime_ns
    time.sleep(TICK_S)
    image.write_bytes(b"B" * 64)
    os.utime(image, ns=(before, before))
    changed = digests.input_digest(item)
    assert changed != first and reads["input"] == 2
    file_digests.forget()
    assert digests.input_digest(item) == changed  # what a fresh process computes
    # replaced by another file (a new inode), and the same path in another structure: not reused
    other = tmp_path / "b.nii"
    other.write_bytes(b"A" * 64)
    other.replace(image)
    assert digests.input_digest(item) == first
    assert digests.input_digest({"image": str(image), "label": 4}) != first


def test_a_file_changed_in_the_last_seconds_is_not_kept(tmp_path, reads, monkeypatch):
    monkeypatch.setattr(file_digests, "RECENT_NS", 2_000_000_000)
    image = tmp_path / "fresh.png"
    image.write_bytes(b"x" * 10)
    digests.input_digest(str(image))
    digests.input_digest(str(image))
    assert reads["input"] == 2


def test_inputs_held_in_memory_are_not_kept(reads):
    value = {"image": np.arange(6, dtype=np.float32), "label": 1}
    digests.input_digest(value)
    assert not file_digests._kept


def test_the_folder_dataset_reads_each_pair_once_per_process(tmp_path, reads):
    for name in ("images", "masks"):
        (tmp_path / name).mkdir()
    for k in range(3):
        np.save(tmp_path / "images" / f"s{k}.npy", np.full((8, 8), k, np.float32))
        np.save(tmp_path / "masks" / f"s{k}.npy", np.zeros((8, 8), np.int64))
    first = FolderDataset(tmp_path, dims=2, channels=1)
    sums = [first.sample_digest(i) for i in range(3)]
    expected = [
        hashlib.sha256(p[1].read_bytes() + p[2].read_bytes()).digest() for p in sorted(first.pairs, key=lambda p: p[0])
    ]
    assert sorted(sums) == sorted(expected)
    again = FolderDataset(tmp_path, dims=2, channels=1)
    assert [again.sample_digest(i) for i in range(3)] == sums and reads["folder"] == 3
    time.sleep(TICK_S)
    np.save(tmp_path / "masks" / f"{again.names[0]}.npy", np.ones((8, 8), np.int64))
    assert again.sample_digest(0) != sums[0] and reads["folder"] == 4


def test_entry_points_are_read_again_only_when_the_import_path_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(manager, "_SETTLED_NS", 0)
    manager._installed.clear()
    scans = []
    real = manager.entry_points
    monkeypatch.setattr(manager, "entry_points", lambda **kw: scans.append(1) or real(**kw))
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    assert "kept" not in manager.installed_entry_points()
    manager.installed_entry_points()
    assert len(scans) == 1
    time.sleep(TICK_S)
    info = site / "kept_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kept-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[segtrack.plugins]\nkept = kept_plugin\n")
    assert "kept" in manager.installed_entry_points() and len(scans) == 2
    monkeypatch.setattr(manager, "_SETTLED_NS", 2_000_000_000)  # the folder just changed: not trusted
    manager.installed_entry_points()
    manager.installed_entry_points()
    assert len(scans) == 4
