"""Send spooled records to MLflow in batches, in order (the shipper process and `segtrack mlflow sync`)."""

from __future__ import annotations

import json
import logging
import shutil
import time

from segtrack_mlflow import store
from segtrack_mlflow.entries import (
    BATCHED,
    ArtifactFile,
    CreateRun,
    DatasetInputs,
    Entry,
    LoggedModel,
    MetricPoint,
    Params,
    Status,
    Tags,
)
from segtrack_mlflow.spool import RECORDS, SYSTEM, TERMINAL, Pending, Spool, SpoolCorrupt, read_meta
from segtrack_mlflow.uri import redact

log = logging.getLogger("segtrack.mlflow")
REFUSAL_RETRIES = 5  # a refusal caused by a concurrent write: retried this often (0.1 s to 1.6 s apart)


class WaitingForParent(Exception):
    """A child run cannot be created before its parent run exists."""


def ship(
    spool: Spool,
    clients: store.Clients,
    spools_by_id: dict[str, Spool] | None = None,
    wait: float = 0.0,
) -> int:
    """Send every complete pending record of ``spool`` through ``clients`` (by the spool's tracking
    URI); returns how many were sent.

    Holds the spool's ship lock throughout (SpoolBusy when another sender keeps it past ``wait``
    seconds): a fit's shipper and `segtrack mlflow sync` never send the same records, nor create
    the run twice. Raises on the first transient failure, leaving the cursor after the last record
    that reached MLflow: the next attempt resumes there. Metric records carry their own timestamp,
    so a record re-sent after an unacknowledged success is a duplicate MLflow's SQL store ignores.
    """
    with spool.shipping(wait):
        return _ship_locked(spool, clients, spools_by_id or {})


def _ship_locked(spool: Spool, clients: store.Clients, spools_by_id: dict[str, Spool]) -> int:
    sent = _ship_stream(spool, clients, spools_by_id, RECORDS)
    if spool.run_id is not None:  # system metric points belong to the run the records created
        sent += _ship_stream(spool, clients, spools_by_id, SYSTEM)
    return sent


def _ship_stream(spool: Spool, clients: store.Clients, spools_by_id: dict[str, Spool], stream: str) -> int:
    sent = 0
    while items := spool.pending(stream=stream):  # up to a corrupt line: the next call names it (SpoolCorrupt)
        sender = clients[spool.meta["tracking_uri"]]
        i = 0
        while i < len(items):
            entry = items[i].entry
            if spool.run_id is None and not isinstance(entry, CreateRun):
                raise RuntimeError(f"spool {spool.local_id}: records precede the run's creation")
            j = _batch_end(items, i) if isinstance(entry, BATCHED) else i + 1
            for attempt in range(REFUSAL_RETRIES + 1):
                try:
                    if isinstance(entry, BATCHED):
                        _send_batch(sender, spool, [p.entry for p in items[i:j]])
                    else:
                        _send_one(sender, spool, entry, items[i + 1 :], spools_by_id)
                    break
                except Exception as exc:
                    if not store.is_rejected(exc):
                        raise
                    if attempt < REFUSAL_RETRIES and store.may_pass_on_retry(exc):
                        time.sleep(0.1 * 2**attempt)  # another client's write is committing
                        continue
                    _reject(spool, items[i:j], exc)
                    break
            spool.commit(items[j - 1].end, stream)
            sent += j - i
            i = j
    return sent


def _batch_end(items: list[Pending], start: int) -> int:
    metrics = params = tags = 0
    j = start
    while j < len(items) and isinstance(entry := items[j].entry, BATCHED):
        m = int(isinstance(entry, MetricPoint))
        p = len(entry.params) if isinstance(entry, Params) else 0
        t = len(entry.tags) if isinstance(entry, Tags) else 0
        if j > start and (
            metrics + m > store.MAX_METRICS or params + p > store.MAX_PARAMS or tags + t > store.MAX_TAGS
        ):
            break
        metrics, params, tags = metrics + m, params + p, tags + t
        j += 1
    return j


def _send_batch(sender, spool: Spool, entries: list[Entry]) -> None:
    models = spool.meta.get("logged_models", {})
    metrics = [
        {
            "key": e.key,
            "value": e.value,
            "timestamp": e.timestamp_ms,
            "step": e.step,
            **({"model_id": models[e.model]} if e.model and e.model in models else {}),
            **({"dataset_name": e.dataset[0], "dataset_digest": e.dataset[1]} if e.dataset else {}),
        }
        for e in entries
        if isinstance(e, MetricPoint)
    ]
    params = [(k, v) for e in entries if isinstance(e, Params) for k, v in e.params.items()]
    tags = {k: str(v) for e in entries if isinstance(e, Tags) for k, v in e.tags.items()}
    for offset in range(0, max(len(params), 1), store.MAX_PARAMS):  # one oversized params record is split
        sender.log_batch(
            spool.run_id,
            metrics if offset == 0 else [],
            dict(params[offset : offset + store.MAX_PARAMS]),
            tags if offset == 0 else {},
        )


def _send_one(sender, spool: Spool, entry: Entry, later: list[Pending], spools_by_id: dict[str, Spool]) -> None:
    if isinstance(entry, CreateRun):
        if spool.run_id is None:
            spool.set_run_id(_create_run(sender, spool, entry, spools_by_id))
    elif isinstance(entry, ArtifactFile):
        local = spool.folder / entry.path
        superseded = entry.slot and any(
            isinstance(newer := p.entry, ArtifactFile) and newer.slot == entry.slot for p in later
        )
        if local.exists() and not superseded:
            sender.log_artifact(spool.run_id, str(local), entry.artifact_path)
        shutil.rmtree(local.parent, ignore_errors=True)
    elif isinstance(entry, LoggedModel):
        from segtrack_mlflow.logged_model import send

        send(sender.mlflow_client, spool, entry)
    elif isinstance(entry, DatasetInputs):
        sender.log_inputs(spool.run_id, entry.datasets)
    elif isinstance(entry, Status):
        sender.set_status(spool.run_id, entry.status, None if entry.status == "RUNNING" else entry.timestamp_ms)
        ended = entry.status != "RUNNING"
        if spool.meta.get("ended") != ended:
            spool.update_meta(ended=ended)  # close_orphan reads it instead of every record


ORPHAN_REASON = (
    "the process writing this run stopped without ending it (killed, or its machine went down); resuming "
    "the fit from its checkpoint continues this run"
)


def close_orphan(spool: Spool, wait: float = 0.0) -> bool:
    """End KILLED (with ``segtrack.end_reason``) the run of a spool that no process writes any more,
    that was sent in full and never given a final status: its fit was SIGKILLed, OOM-killed or lost
    its machine, and nothing else would ever end it. Returns whether records were added (to send)."""
    if spool.run_id is None or spool.has_writer():
        return False
    with spool.shipping(wait):
        if spool.has_pending():
            return False
        ended = spool.meta.get("ended")
        if ended is None:  # spooled before segtrack kept it in meta.json: the records say
            ended = spool.last_status() in TERMINAL
            spool.update_meta(ended=ended)
        if ended:
            return False
        closing: list[Entry] = [Tags({"segtrack.end_reason": ORPHAN_REASON}), Status("KILLED", int(time.time() * 1000))]
        return spool.append_unowned(closing)  # False: a fit resumed it meanwhile


def _create_run(sender, spool: Spool, entry: CreateRun, spools_by_id: dict[str, Spool]) -> str:
    experiment_id = sender.experiment_id(entry.experiment, entry.artifact_location)
    if spool.meta.get("experiment_id") != experiment_id:
        spool.update_meta(experiment_id=experiment_id)  # for links to the run (a study's trials)
    # a crash (or a lost reply) between create_run and saving its id must not create a second
    # run on replay: only then is the server asked for a run carrying this spool's id
    if spool.meta.get("create_attempted"):
        existing = sender.find_run(experiment_id, store.SPOOL_ID_TAG, spool.local_id)
        if existing:
            return existing
    # a resumed fit that moved to another machine continues the run its first spool created
    continued = spool.meta.get("continues")
    if continued:
        existing = sender.find_run(experiment_id, store.SPOOL_ID_TAG, continued)
        if existing:
            return existing
        log.warning(
            "the run of spool %s (resumed here) is not in MLflow yet: this spool starts a new run; send the "
            "first one with `segtrack mlflow sync` on the machine that holds it",
            continued,
        )
    spool.update_meta(create_attempted=True)
    tags = {**entry.tags, store.SPOOL_ID_TAG: spool.local_id}
    if entry.parent:
        parent = spools_by_id.get(entry.parent)
        # read from disk when unknown here: another sender may have created the parent run
        parent_run_id = (parent and parent.run_id) or _sibling_run_id(spool, entry.parent)
        if parent_run_id is None:
            raise WaitingForParent(f"parent spool {entry.parent} has no MLflow run yet")
        tags["mlflow.parentRunId"] = parent_run_id
    return sender.create_run(experiment_id, entry.timestamp_ms, tags, entry.run_name or None)


def _sibling_run_id(spool: Spool, local_id: str) -> str | None:
    """The MLflow run id recorded by another spool of the same root (None if it has none yet)."""
    try:
        return read_meta(spool.folder.parent / local_id).get("run_id")
    except (OSError, SpoolCorrupt):
        return None


def _reject(spool: Spool, items: list[Pending], error: BaseException) -> None:
    """The server refused these records: keep them beside the spool, say so, and move on."""
    with open(spool.folder / "rejected.jsonl", "a") as fh:
        for item in items:
            fh.write(json.dumps({"record": item.record, "error": redact(str(error))[:500]}) + "\n")
    log.error(
        "MLflow refused %d record(s) of run %s (%s); they are kept in %s",
        len(items),
        spool.run_id,
        redact(str(error).splitlines()[0])[:200],
        spool.folder / "rejected.jsonl",
    )
