"""What every hook's ``trainer`` argument offers a plugin, whichever loop runs the fit."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Loop(Protocol):
    """The loop behind a fit: ``SegmentationTrainer``, or a ``FitSession`` driven by a hand-written
    loop or a framework adapter. Plugins read and call only these; anything else on the object
    may change without notice."""

    @property
    def settings(self) -> Any:
        """The resolved settings (``segtrack.Settings``, read-only), the plugins' sections included."""
        ...

    @property
    def model(self) -> Any:
        """The ``torch.nn.Module`` being trained (None where the loop did not name it)."""
        ...

    @property
    def device(self) -> Any:
        """The ``torch.device`` it trains on."""
        ...

    @property
    def epoch(self) -> int:
        """The epoch running now (0-based)."""
        ...

    @property
    def batches_per_epoch(self) -> int:
        """Training batches per epoch on this rank; 0 when unknown."""
        ...

    @property
    def stop_reason(self) -> str | None:
        """Why a stop was requested, or None."""
        ...

    def request_stop(self, reason: str, all_folds: bool = False) -> None:
        """Ask the fit to end after the current epoch (status ``stopped``); ``all_folds``: in a
        cross-validation the folds not yet run are skipped too. A loop of one's own reads
        ``FitSession.should_stop``."""
        ...
