"""What a study is, as its creator records it, and whether a joining worker runs the same study.

A worker that joins ranks its trials with the others': it must score them by the same objective
(``checkpoint.monitor`` and ``checkpoint.mode``), search the same space, cross-validate over as many
folds and start every trial from the same base settings. Keys that only say where a worker runs
(device, folders, loader processes) may differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from segtrack import ConfigError

COMPARED_SECTIONS = ("train", "data", "infer", "model", "checkpoint")
MACHINE_LOCAL = {
    "train.device",
    "train.num_workers",
    "data.path",  # the same data may lie under another mount point on another node
    "infer.batch_size",
    "infer.output_device",
    "checkpoint.dir",
    "checkpoint.keep",
}
ATTR_OBJECTIVE = "segtrack.objective"
ATTR_FOLDS = "segtrack.folds"
ATTR_BASE = "segtrack.base"
ATTR_BASE_DIGEST = "segtrack.base_digest"


def base_terms(config: Mapping[str, Any], searched: set[str]) -> dict[str, Any]:
    """The base settings a trial starts from, flattened to ``section.key``: the sections that shape
    training, without the searched keys and the machine-local ones (values as recorded: masked)."""
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for name, value in node.items():
            key = f"{prefix}{name}"
            if key in searched or key in MACHINE_LOCAL:
                continue
            if isinstance(value, Mapping) and value:
                walk(value, f"{key}.")
            else:
                flat[key] = value

    for section in COMPARED_SECTIONS:
        if isinstance(config.get(section), Mapping):
            walk(config[section], f"{section}.")
    return json.loads(json.dumps(flat, default=str))  # tuples as lists: as they come back from the storage


def digest(terms: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(terms, sort_keys=True).encode()).hexdigest()[:16]


def study_attrs(objective: str, direction: str, folds: int | None, terms: Mapping[str, Any]) -> dict[str, Any]:
    return {
        ATTR_OBJECTIVE: f"{objective} ({direction})",
        ATTR_FOLDS: folds or 0,
        ATTR_BASE: json.dumps(terms, sort_keys=True),
        ATTR_BASE_DIGEST: digest(terms),
    }


def check_join(name: str, recorded: Mapping[str, Any], mine: Mapping[str, Any], *, force: bool) -> list[str]:
    """Raise one ConfigError naming how this worker's study differs from the recorded one; base
    settings that differ are returned instead (as warnings) when ``force``. Attributes the study does
    not have (made by an older segtrack) are not compared."""
    if ATTR_OBJECTIVE in recorded and recorded[ATTR_OBJECTIVE] != mine[ATTR_OBJECTIVE]:
        raise ConfigError(
            f"study {name!r} ranks its trials by {recorded[ATTR_OBJECTIVE]}, this worker by {mine[ATTR_OBJECTIVE]}: "
            "set checkpoint.monitor and checkpoint.mode as the study has them, or use another --study"
        )
    if ATTR_FOLDS in recorded and int(recorded[ATTR_FOLDS]) != int(mine[ATTR_FOLDS]):
        have, want = int(recorded[ATTR_FOLDS]), int(mine[ATTR_FOLDS])
        said = f"cross-validates each trial over {have} folds" if have else "fits each trial once (no --folds)"
        fix = f"pass --folds {have}" if have else "leave --folds out"
        raise ConfigError(
            f"study {name!r} {said}, this worker asks for {f'{want} folds' if want else 'one fit'}: {fix}, "
            "or use another --study"
        )
    if ATTR_BASE_DIGEST not in recorded or recorded[ATTR_BASE_DIGEST] == mine[ATTR_BASE_DIGEST]:
        return []
    theirs, ours = json.loads(recorded[ATTR_BASE]), json.loads(mine[ATTR_BASE])
    changed = [
        f"{key}: {_show(theirs.get(key, '(unset)'))} in the study, {_show(ours.get(key, '(unset)'))} here"
        for key in sorted(set(theirs) | set(ours))
        if theirs.get(key, "(unset)") != ours.get(key, "(unset)")
    ]
    if force:
        return changed
    listed = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
    raise ConfigError(
        f"study {name!r} was created with other base settings ({listed}): run with the study's settings, "
        "use another --study, or pass --force-join to rank this worker's trials with them anyway"
    )


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)
