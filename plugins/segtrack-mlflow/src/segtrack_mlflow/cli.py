"""``segtrack mlflow sync`` and ``segtrack mlflow status``: the spools left on this machine."""

from __future__ import annotations

from pathlib import Path

from segtrack_mlflow.settings import mlflow_section

SYNC_LOCK_WAIT = 30.0  # seconds to wait for a fit's shipper that is sending the same spool


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("mlflow", help="MLflow tracking: send or inspect local spools")
    commands = parser.add_subparsers(dest="mlflow_command", metavar="COMMAND", required=True)
    sync = commands.add_parser("sync", help="send every spooled record to MLflow (safe to repeat)")
    sync.add_argument("--spool-dir", help="spool folder (default: mlflow.spool_dir)")
    sync.set_defaults(handler=sync_command)
    status = commands.add_parser("status", help="list spooled runs and what is still unsent")
    status.add_argument("--spool-dir", help="spool folder (default: mlflow.spool_dir)")
    status.set_defaults(handler=status_command)


def _spools(args, settings):
    from segtrack_mlflow.spool import Spool

    folder = Path(args.spool_dir or mlflow_section(settings)["spool_dir"])
    return folder, Spool.all_in(folder)


def sync_command(args, settings) -> int:
    from segtrack_mlflow import store
    from segtrack_mlflow.shipper import ship
    from segtrack_mlflow.spool import SpoolBusy
    from segtrack_mlflow.uri import redact

    store.configure_http(mlflow_section(settings)["request_timeout"])
    folder, spools = _spools(args, settings)
    clients, by_id, failed = {}, {s.local_id: s for s in spools}, 0
    for spool in spools:
        if not spool.has_pending():
            continue
        try:
            sent = ship(spool, clients, by_id, wait=SYNC_LOCK_WAIT)
            print(f"{spool.local_id}  {spool.meta['run_name']}: sent {sent} record(s) to run {spool.run_id}")
        except SpoolBusy:
            failed += 1
            print(f"{spool.local_id}  {spool.meta['run_name']}: another process (a fit still running?) has been "
                  f"sending it for {SYNC_LOCK_WAIT:.0f} s; run `segtrack mlflow sync` again when it ends")
        except Exception as exc:
            failed += 1
            left = sum(spool.summary().values())
            print(f"{spool.local_id}  {spool.meta['run_name']}: {left} record(s) still spooled; "
                  f"{redact(spool.meta['tracking_uri'])} failed: {type(exc).__name__}: {str(exc)[:200]}")
    if not failed:
        print(f"nothing left to send in {folder}")
    return 1 if failed else 0


def status_command(args, settings) -> int:
    from segtrack_mlflow.uri import redact

    folder, spools = _spools(args, settings)
    for spool in spools:
        left = spool.summary()
        state = ", ".join(f"{n} {k}" for k, n in sorted(left.items())) or "all sent"
        print(f"{spool.local_id}  {spool.meta['run_name']}  run {spool.run_id or '(not created yet)'}  "
              f"{redact(spool.meta['tracking_uri'])}  {state}")
    if not spools:
        print(f"no spooled runs in {folder}")
    return 0
