"""The spool's entries, typed: what hooks write and the shipper sends. On disk each is one JSON
line whose ``"t"`` names its kind (metric points keep one-letter keys: they are most lines).
``encode``/``decode`` are the only places that know the on-disk keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CreateRun:
    experiment: str
    run_name: str
    tags: dict[str, str]
    parent: str | None  # local id of the parent's spool (CV folds)
    timestamp_ms: int
    artifact_location: str | None = None


@dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float
    step: int
    timestamp_ms: int
    model: str | None = None  # key of a LoggedModel of this spool the point also belongs to
    dataset: tuple[str, str] | None = None  # (name, digest) of the dataset input it was measured on


@dataclass(frozen=True)
class Params:
    params: dict[str, str]


@dataclass(frozen=True)
class Tags:
    tags: dict[str, str]


@dataclass(frozen=True)
class ArtifactFile:
    path: str  # relative to the spool folder
    artifact_path: str | None
    slot: str | None = None  # a newer file of the same slot supersedes an unsent older one


@dataclass(frozen=True)
class Status:
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    timestamp_ms: int


@dataclass(frozen=True)
class DatasetInputs:
    datasets: list[dict[str, Any]]  # name, digest, source_type, source, profile, context


@dataclass(frozen=True)
class LoggedModel:
    key: str  # unique within the spool
    name: str
    path: str  # the MLflow model folder, relative to the spool folder
    step: int
    register: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # the model's own tags (e.g. its ONNX parity)


Entry = CreateRun | MetricPoint | Params | Tags | ArtifactFile | Status | DatasetInputs | LoggedModel
BATCHED = (MetricPoint, Params, Tags)  # sent together by log_batch


def encode(entry: Entry) -> dict[str, Any]:
    if isinstance(entry, MetricPoint):
        line = {"t": "metric", "k": entry.key, "v": float(entry.value), "s": int(entry.step), "ts": entry.timestamp_ms}
        if entry.model is not None:
            line["m"] = entry.model
        if entry.dataset is not None:
            line["d"] = list(entry.dataset)
        return line
    if isinstance(entry, CreateRun):
        return {
            "t": "create",
            "experiment": entry.experiment,
            "run_name": entry.run_name,
            "tags": entry.tags,
            "parent": entry.parent,
            "ts": entry.timestamp_ms,
            "artifact_location": entry.artifact_location,
        }
    if isinstance(entry, Params):
        return {"t": "params", "params": entry.params}
    if isinstance(entry, Tags):
        return {"t": "tags", "tags": entry.tags}
    if isinstance(entry, ArtifactFile):
        return {"t": "file", "p": entry.path, "a": entry.artifact_path, "slot": entry.slot}
    if isinstance(entry, Status):
        return {"t": "status", "status": entry.status, "ts": entry.timestamp_ms}
    if isinstance(entry, DatasetInputs):
        return {"t": "inputs", "datasets": entry.datasets}
    return {
        "t": "model",
        "key": entry.key,
        "name": entry.name,
        "p": entry.path,
        "step": entry.step,
        "register": entry.register,
        "params": entry.params,
        "tags": entry.tags,
    }


def decode(line: dict[str, Any]) -> Entry:
    """The entry of one spooled line; ValueError for a kind this version does not know."""
    kind = line["t"]
    if kind == "metric":
        dataset = tuple(line["d"]) if line.get("d") else None
        return MetricPoint(line["k"], line["v"], line["s"], line["ts"], line.get("m"), dataset)
    if kind == "create":
        return CreateRun(
            line["experiment"],
            line.get("run_name") or "",
            line.get("tags", {}),
            line.get("parent"),
            line["ts"],
            line.get("artifact_location"),
        )
    if kind == "params":
        return Params(line["params"])
    if kind == "tags":
        return Tags(line["tags"])
    if kind == "file":
        return ArtifactFile(line["p"], line.get("a"), line.get("slot"))
    if kind == "status":
        return Status(line["status"], line["ts"])
    if kind == "inputs":
        return DatasetInputs(line["datasets"])
    if kind == "model":
        return LoggedModel(
            line["key"],
            line["name"],
            line["p"],
            line["step"],
            line.get("register"),
            line.get("params") or {},
            line.get("tags") or {},
        )
    raise ValueError(f"unknown spool record type {kind!r}")
