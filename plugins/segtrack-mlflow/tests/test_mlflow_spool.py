"""Two senders of one spool (a fit's shipper thread and `segtrack mlflow sync`, or two processes)
must never create the run twice nor send a record twice."""

from __future__ import annotations

import threading

import pytest
from mlflow import MlflowClient

from segtrack_mlflow.shipper import ship
from segtrack_mlflow.spool import FIX, Spool, SpoolBusy
from segtrack_mlflow.store import Clients
from segtrack_mlflow.uri import local_artifact_root
from testsupport.mlflow_reads import history, only_run

STEPS = 40


def _spool(root, uri) -> Spool:
    spool = Spool.create(root, {"tracking_uri": uri, "experiment": "segtrack", "run_name": "racer", "parent": None})
    spool.append(
        {
            "t": "create",
            "experiment": "segtrack",
            "run_name": "racer",
            "tags": {},
            "parent": None,
            "ts": 1_700_000_000_000,
            "artifact_location": local_artifact_root(uri),
        }
    )
    for step in range(STEPS):
        spool.metric("train_loss", 1.0 / (step + 1), step, timestamp_ms=1_700_000_000_000 + step)
    spool.append({"t": "status", "status": "FINISHED", "ts": 1_700_000_100_000})
    spool.close()
    return spool


def test_concurrent_senders_create_one_run_and_send_each_record_once(sqlite_uri, tmp_path):
    folder = _spool(tmp_path / "spool", sqlite_uri).folder
    senders = 4
    start, sent, errors = threading.Barrier(senders), [], []

    def send():
        spool = Spool(folder, writer=False)  # its own open files, as `segtrack mlflow sync` would have
        start.wait()
        try:
            sent.append(ship(spool, Clients(), wait=120))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert sum(sent) == STEPS + 2 and sorted(sent)[:-1] == [0] * (senders - 1)  # one sender did it all
    client = MlflowClient(sqlite_uri)
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert history(client, run.info.run_id, "train_loss") == [(s, 1.0 / (s + 1)) for s in range(STEPS)]


def test_a_spool_being_sent_elsewhere_is_left_alone(sqlite_uri, tmp_path):
    spool = _spool(tmp_path / "spool", sqlite_uri)
    with Spool(spool.folder, writer=False).shipping():
        with pytest.raises(SpoolBusy, match="being sent by another process"):
            ship(spool, Clients(), wait=0.2)
        assert spool.has_pending()
    assert ship(spool, Clients()) == STEPS + 2 and not spool.has_pending()


# -- torn and corrupt spools: `status` changes nothing, `sync` sends what it can and names the line --


def _cli(capsys, *args):
    from segtrack.cli import main

    code = main(["mlflow", *args, "--set", "plugins.disabled=['analytics']"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _replace_line(spool, number, text: bytes):
    path = spool.folder / "records.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[number - 1] = text
    path.write_bytes(b"".join(lines))


def test_status_names_a_corrupt_record_and_changes_nothing(tmp_path, capsys):
    root = tmp_path / "spool"
    good, bad = _spool(root, "sqlite:///unused.db"), _spool(root, "sqlite:///unused.db")
    _replace_line(bad, 5, b'{"t":"metric","k":"train_lo{"t":"metric"}\n')  # a torn record, then the next
    before = _snapshot(root)
    code, out, err = _cli(capsys, "status", "--spool-dir", str(root))
    assert code == 2
    assert err.strip().splitlines() == [
        f"segtrack: error: spool {bad.folder}: line 5 of records.jsonl is corrupt (Expecting ',' delimiter at "
        f"column 30): {FIX}"
    ]
    assert f"{good.local_id}  racer  run (not created yet)  sqlite:///unused.db  1 create, 40 metric, 1 status" in out
    assert _snapshot(root) == before


def test_sync_moves_a_corrupt_record_aside_and_sends_the_rest(sqlite_uri, tmp_path, capsys):
    spool = _spool(tmp_path / "spool", sqlite_uri)
    _replace_line(spool, 5, b"\0\0\0\0\n")  # a crash left zeros where step 3 was
    code, out, err = _cli(capsys, "sync", "--spool-dir", str(spool.folder.parent))
    assert code == 0 and "moved corrupt line(s) 5 of records.jsonl" in out and not err
    assert (spool.folder / "quarantined.jsonl").read_bytes() == b"\0\0\0\0\n"
    client = MlflowClient(sqlite_uri)
    run_id = only_run(client).info.run_id
    assert [s for s, _ in history(client, run_id, "train_loss")] == [s for s in range(STEPS) if s != 3]
    assert only_run(client).info.status == "FINISHED"  # the spool's own final status


def test_a_torn_last_record_is_reported_by_status_and_dropped_by_sync(sqlite_uri, tmp_path, capsys):
    spool = _spool(tmp_path / "spool", sqlite_uri)
    records = spool.folder / "records.jsonl"
    whole = records.read_bytes()
    records.write_bytes(whole + b'{"t":"metric","k":"val_')  # the process died in this write
    before = _snapshot(spool.folder)
    code, out, _ = _cli(capsys, "status", "--spool-dir", str(spool.folder.parent))
    assert code == 0 and "42 metric" not in out and f"line {STEPS + 3} is cut short" in out
    assert _snapshot(spool.folder) == before

    code, out, err = _cli(capsys, "sync", "--spool-dir", str(spool.folder.parent))
    assert code == 0 and f"dropped line {STEPS + 3} of records.jsonl" in out and not err
    assert records.read_bytes() == whole
    client = MlflowClient(sqlite_uri)
    assert len(history(client, only_run(client).info.run_id, "train_loss")) == STEPS


def test_sync_never_cuts_the_tail_a_live_fit_is_writing(tmp_path):
    writer = _spool(tmp_path / "spool", "sqlite:///unused.db")
    writer = Spool(writer.folder)  # a fit holds its spool open
    records = writer.folder / "records.jsonl"
    with open(records, "ab") as fh:
        fh.write(b'{"t":"metric"')  # half of a record: the fit is writing it
    before = records.read_bytes()
    assert Spool(writer.folder, writer=False).repair_tail() is None and records.read_bytes() == before
    writer.close()  # the fit died: now the half record is a torn tail
    assert Spool(writer.folder, writer=False).repair_tail() == STEPS + 3 and records.read_bytes().endswith(b"}\n")


def test_a_corrupt_meta_json_is_named_and_the_other_spools_listed(tmp_path, capsys):
    root = tmp_path / "spool"
    good, bad = _spool(root, "sqlite:///unused.db"), _spool(root, "sqlite:///unused.db")
    (bad.folder / "meta.json").write_text('{"local_id": "x", "tracking')
    code, out, err = _cli(capsys, "status", "--spool-dir", str(root))
    assert code == 2 and good.local_id in out
    assert err.startswith(f"segtrack: error: spool {bad.folder}: meta.json is corrupt (Unterminated string")
    assert len(err.strip().splitlines()) == 1


def test_a_dead_shippers_last_error_is_not_reported_as_current(tmp_path):
    """A fit reads the shipper's state to say "MLflow unreachable": the error a shipper left when
    it gave up must not be shown while its successor (or none) runs."""
    import fcntl
    import os
    import subprocess
    import sys

    from segtrack_mlflow.shipper_files import ShipperFiles

    files = ShipperFiles(tmp_path, "http://127.0.0.1:5000")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    files.write_state(pid=int(gone.stdout), uri=files.uri, error="ConnectionError: refused")
    assert files.live_error() is None  # no shipper holds the lock
    fd = os.open(files.lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a successor runs, before it rewrote the state
        assert files.live_error() is None
        files.write_state(pid=os.getpid(), uri=files.uri, error="ConnectionError: refused")
        assert files.live_error() == "ConnectionError: refused"  # the running shipper's own trouble
    finally:
        os.close(fd)
