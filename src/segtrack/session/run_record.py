"""The run record (``RunInfo``) every loop hands ``fit_start``: the fields only the loop knows are
passed in; who runs it (version, plugins, ranks) is filled in here, the same for every loop."""

from __future__ import annotations

from typing import Any

from segtrack.plugins.manager import PluginManager
from segtrack.plugins.records import RunInfo, freeze
from segtrack.runtime.distributed import DistContext


def run_record(*, hooks: PluginManager, dist: DistContext, config: Any, **fields: Any) -> RunInfo:
    import uuid

    from segtrack import __version__

    return RunInfo(
        config=freeze(config),
        rank=dist.rank,
        world_size=dist.world_size,
        local_rank=dist.local_rank,
        segtrack_version=__version__,
        plugins=tuple((r.name, r.version or "") for r in hooks.plugin_info.values()),
        **{"fold": None, "num_folds": None, "cv_id": None, "fit_id": uuid.uuid4().hex[:16], **fields},
    )
