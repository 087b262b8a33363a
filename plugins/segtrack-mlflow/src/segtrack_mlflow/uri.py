"""Tracking URI resolution lives in the core (segtrack.tracking_uri), shared with
segtrack-analytics so both plugins always read and write the same store."""

from segtrack.tracking_uri import (  # noqa: F401
    DEFAULT_TRACKING_URI,
    MASK,
    check_uri,
    is_remote,
    local_artifact_root,
    redact,
    resolve_tracking_uri,
    split_credentials,
    with_credentials,
)
