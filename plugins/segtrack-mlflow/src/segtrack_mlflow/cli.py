"""``segtrack mlflow sync`` and ``segtrack mlflow status``: the spools left on this machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from segtrack_mlflow.settings import mlflow_section

SYNC_LOCK_WAIT = 30.0  # seconds to wait for a fit's shipper that is sending the same spool


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("mlflow", help="MLflow tracking: send or inspect local spools")
    commands = parser.add_subparsers(dest="mlflow_command", metavar="COMMAND", required=True)
    sync = commands.add_parser("sync", help="send every spooled record to MLflow (safe to repeat)")
    sync.add_argument("--spool-dir", help="spool folder (default: mlflow.spool_dir)")
    sync.set_defaults(handler=sync_command)
    status = commands.add_parser("status", help="list spooled runs and what is still unsent (changes nothing)")
    status.add_argument("--spool-dir", help="spool folder (default: mlflow.spool_dir)")
    status.set_defaults(handler=status_command)


def _open_spools(args, settings) -> tuple[Path, list, int]:
    """(spool folder, its spools opened read-only, how many could not be opened: each reported)."""
    from segtrack_mlflow.spool import Spool, SpoolCorrupt

    folder = Path(args.spool_dir or mlflow_section(settings)["spool_dir"])
    spools, corrupt = [], 0
    for path in Spool.folders_in(folder):
        try:
            spools.append(Spool(path, writer=False))
        except SpoolCorrupt as exc:
            corrupt += _report(exc)
    return folder, spools, corrupt


def _report(error: Exception) -> int:
    print(f"segtrack: error: {error}", file=sys.stderr)
    return 1


def sync_command(args, settings) -> int:
    from segtrack_mlflow import store
    from segtrack_mlflow.shipper import close_orphan, ship
    from segtrack_mlflow.spool import QUARANTINE, SpoolBusy, SpoolCorrupt
    from segtrack_mlflow.uri import redact, resolve_tracking_uri

    section = mlflow_section(settings)
    store.configure_http(section["request_timeout"])
    store.use_credentials(section["username"], section["password"])
    folder, spools, corrupt = _open_spools(args, settings)
    # spools keep their URI with the password masked: the URI this command is given supplies it
    uri = resolve_tracking_uri(None, settings)
    os.environ.setdefault("MLFLOW_TRACKING_URI", store.connect_uri(uri))  # a models:/ source resolves there
    clients, by_id, failed = store.Clients(uri), {s.local_id: s for s in spools}, 0
    for spool in spools:
        name = f"{spool.local_id}  {spool.meta['run_name']}"
        torn = spool.repair_tail()
        if torn:
            print(f"{name}: dropped line {torn} of records.jsonl, a record cut short by a crash")
        moved, ended = spool.quarantine()
        if moved:
            print(
                f"{name}: moved corrupt line(s) {', '.join(map(str, moved))} of records.jsonl, which cannot be "
                f"sent, to {spool.folder / QUARANTINE}; the rest is sent"
                + (" and the run, whose final status was not recorded, is marked FAILED" if ended else "")
            )
        try:
            if spool.has_pending():
                sent = ship(spool, clients, by_id, wait=SYNC_LOCK_WAIT)
                print(f"{name}: sent {sent} record(s) to run {spool.run_id}")
            if close_orphan(spool, wait=SYNC_LOCK_WAIT):
                ship(spool, clients, by_id, wait=SYNC_LOCK_WAIT)
                print(f"{name}: run {spool.run_id} was left RUNNING by a process that is gone: ended KILLED")
        except SpoolBusy:
            failed += 1
            print(
                f"{name}: another process (a fit still running?) has been sending it for {SYNC_LOCK_WAIT:.0f} s; "
                f"run `segtrack mlflow sync` again when it ends"
            )
        except SpoolCorrupt as exc:
            corrupt += _report(exc)
        except Exception as exc:
            failed += 1
            left = sum(spool.summary().values())
            print(
                f"{name}: {left} record(s) still spooled; {redact(spool.meta['tracking_uri'])} failed: "
                f"{type(exc).__name__}: {redact(str(exc))[:200]}"
            )
    if not failed and not corrupt:
        print(f"nothing left to send in {folder}")
    return 2 if corrupt else 1 if failed else 0


def status_command(args, settings) -> int:
    from segtrack_mlflow.spool import SpoolCorrupt
    from segtrack_mlflow.uri import redact

    folder, spools, corrupt = _open_spools(args, settings)
    for spool in spools:
        try:
            left = spool.summary()
        except SpoolCorrupt as exc:
            corrupt += _report(exc)
            continue
        state = ", ".join(f"{n} {k}" for k, n in sorted(left.items())) or "all sent"
        torn = spool.torn_line()
        if torn:
            state += f"; line {torn} is cut short (a crash, or a fit writing it): `segtrack mlflow sync` drops it"
        print(
            f"{spool.local_id}  {spool.meta['run_name']}  run {spool.run_id or '(not created yet)'}  "
            f"{redact(spool.meta['tracking_uri'])}  {state}"
        )
    if not spools and not corrupt:
        print(f"no spooled runs in {folder}")
    from segtrack_mlflow.shipper_files import shipper_lines

    for line in shipper_lines(folder):
        print(line)
    return 2 if corrupt else 0
