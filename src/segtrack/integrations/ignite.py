"""segtrack's plugins under Ignite engines, MONAI's ``SupervisedTrainer`` among them: a handler that
drives one ``FitSession`` per ``engine.run``.

::

    handler = SegtrackHandler(evaluator=evaluator)      # evaluator: MONAI's SupervisedEvaluator, any Engine
    handler.attach(trainer)
    Checkpoint({"trainer": trainer, "net": net, "segtrack": handler}, DiskSaver("ckpt"), ...)
    # resumed: Checkpoint.load_objects(...) before trainer.run() continues the same tracked run

- per iteration: the loss (``engine.state.output``: a number, ``{"loss": ...}``, or MONAI's list of
  per-item dicts) as ``train_batch_end`` at ``engine.state.iteration``;
- per epoch: ``train_loss`` (the epoch's mean), the trainer engine's own metrics, and the
  evaluator's metrics from its run this epoch (``epoch_end`` waits for it when it runs after this
  handler; an epoch it skips is recorded without them);
- state for Ignite's ``Checkpoint``: ``state_dict``/``load_state_dict``. A checkpoint written at
  an epoch's end holds that epoch (it is recorded first when the checkpoint asks for the state);
- ``checkpoints``: Ignite ``Checkpoint`` objects whose files become ``checkpoint_saved`` ("best"
  for one with a ``score_function``, else "last"); the best one is exported to ONNX at the end;
- rank 0 only (``idist.get_rank()``); a plugin that raises is reported and training goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from segtrack.integrations.metrics import RunningMean, scalar, scalars
from segtrack.session.fit_session import FitSession

log = logging.getLogger("segtrack.ignite")


class SegtrackHandler:
    """Tracks an Ignite engine's run through segtrack's plugins.

    :param settings: as for ``FitSession``.
    :param plugins: plugin objects registered besides the installed ones.
    :param evaluator: the engine that validates (its ``state.metrics`` become epoch metrics).
    :param model: the network trained; MONAI's engines name it themselves (``engine.network``).
    :param run_name: the run's name (default ``run.name``).
    :param checkpoints: Ignite ``Checkpoint`` handlers whose saved files are reported (also settable
        as ``handler.checkpoints`` once made: a ``Checkpoint`` that saves this handler needs it first).
    """

    def __init__(
        self,
        settings: Any = None,
        plugins: Iterable[Any] = (),
        evaluator: Any = None,
        *,
        model: Any = None,
        run_name: str | None = None,
        checkpoints: Iterable[Any] = (),
    ):
        self._settings = settings
        self._plugins = tuple(plugins)
        self.evaluator = evaluator
        self._model = model
        self._run_name = run_name
        self.checkpoints = tuple(checkpoints)
        self.session: FitSession | None = None
        self._engine: Any = None
        self._resume_state: dict[str, Any] | None = None
        self._train_loss = RunningMean()
        self._val_metrics: dict[str, float] = {}
        self._validated = False  # the evaluator ran since this epoch began
        self._pending: int | None = None  # an epoch done whose validation has not come yet
        self._recorded_epoch = -1
        self._example: Any = None
        self._reported: dict[str, str] = {}

    def attach(self, engine: Any) -> SegtrackHandler:
        from ignite.engine import Events

        self._engine = engine
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._exception_raised)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._evaluator_iteration)
            self.evaluator.add_event_handler(Events.COMPLETED, self._evaluator_completed)
        return self

    # -- state for Ignite's Checkpoint ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self.session is None:
            return {"session": self._resume_state} if self._resume_state else {}
        self._record_due_epoch()  # a checkpoint at an epoch's end holds that epoch
        return {"session": self.session.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = state_dict.get("session")

    # -- the run -----------------------------------------------------------------------------------

    def _started(self, engine: Any) -> None:
        if _rank() != 0:
            return
        model = self._model if self._model is not None else getattr(engine, "network", None)
        self.session = FitSession(
            self._settings,
            self._plugins,
            model=model,
            run_name=self._run_name,
            resume_state=self._resume_state,
            train_data=getattr(engine.state, "dataloader", None) or getattr(engine, "data_loader", None),
            val_data=getattr(self.evaluator, "data_loader", None) if self.evaluator is not None else None,
            epochs=engine.state.max_epochs or None,
            optimizer=getattr(engine, "optimizer", None),
            loss=getattr(engine, "loss_function", None),
            loop="ignite",
            handle_sigterm=False,  # Ctrl-C and SIGTERM reach EXCEPTION_RAISED as KeyboardInterrupt when set up so
            rank=0,
            world_size=_world_size(),
        )
        self._resume_state, self._reported, self._pending = None, {}, None
        self._recorded_epoch = engine.state.epoch - 1
        self.session.start()

    def _epoch_started(self, engine: Any) -> None:
        self._flush_pending()
        if self.session is not None and engine.state.epoch > 1:  # files the last epoch's handlers wrote
            self._report_checkpoints(engine.state.epoch - 2)
        self._train_loss.reset()
        self._validated = False
        if self.session is not None:
            self.session.epoch_start(engine.state.epoch - 1)

    def _iteration_completed(self, engine: Any) -> None:
        if self.session is None:
            return
        loss = _loss_of(engine.state.output)
        self._train_loss.add(loss)
        if self._example is None:
            self._example = _inputs_of(engine.state.batch)
        if loss is not None:
            optimizer = getattr(engine, "optimizer", None)
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else float("nan")
            self.session.batch_end(engine.state.iteration, loss, epoch=engine.state.epoch - 1, lr=lr)

    def _evaluator_iteration(self, evaluator: Any) -> None:
        if self._example is None and self.session is not None:
            self._example = _inputs_of(evaluator.state.batch)

    def _evaluator_completed(self, evaluator: Any) -> None:
        self._val_metrics = scalars(evaluator.state.metrics)
        self._validated = True
        if self._pending is not None:
            self._record(self._pending)

    def _epoch_completed(self, engine: Any) -> None:
        if self.session is None:
            return
        epoch = engine.state.epoch - 1
        if self.evaluator is None or self._validated:
            self._record(epoch)
        else:
            self._pending = epoch  # the evaluator runs after this handler: recorded when it completes
        self._report_checkpoints(epoch)

    def _record_due_epoch(self) -> None:
        """The epoch that just ended, if its checkpoint is being written before it was recorded."""
        from ignite.engine import Events

        engine = self._engine
        if engine is None or engine.last_event_name != Events.EPOCH_COMPLETED:
            return
        epoch = engine.state.epoch - 1
        if epoch > self._recorded_epoch and (self.evaluator is None or self._validated):
            self._record(epoch)

    def _flush_pending(self) -> None:
        if self._pending is not None:
            self._record(self._pending)

    def _record(self, epoch: int) -> None:
        self._pending = None
        if self.session is None or epoch <= self._recorded_epoch:
            return
        metrics = scalars(getattr(self._engine.state, "metrics", {}) or {})
        if self._validated:
            metrics.update(self._val_metrics)
        mean = self._train_loss.mean()
        if mean is not None:
            metrics["train_loss"] = mean
        optimizer = getattr(self._engine, "optimizer", None)
        if optimizer is not None:
            metrics.setdefault("lr", float(optimizer.param_groups[0]["lr"]))
        self._recorded_epoch = epoch
        self.session.epoch_end(epoch, metrics, global_step=self._engine.state.iteration)
        if self.session.should_stop:
            self._engine.terminate()

    def _report_checkpoints(self, epoch: int) -> None:
        assert self.session is not None
        for checkpoint in self.checkpoints:
            path = _saved_path(checkpoint)
            kind = "best" if getattr(checkpoint, "score_function", None) is not None else "last"
            if path is not None and self._reported.get(kind) != str(path) and path.is_file():
                self._reported[kind] = str(path)
                self.session.checkpoint_saved(path, kind=kind, epoch=epoch)

    def _completed(self, engine: Any) -> None:
        if self.session is None:
            return
        self._flush_pending()
        self._report_checkpoints(engine.state.epoch - 1)
        best = self._reported.get("best")
        model = self.session.model
        if self.session.settings["export"]["enabled"] and best and model is not None and self._example is not None:
            self.session.export(self._example, model, weights=best)
        self.session.end()
        self.session = None

    def _exception_raised(self, engine: Any, error: BaseException) -> None:
        # Ignite hands an exception to its handlers instead of raising it: end the run, then raise it
        if self.session is not None:
            self.session.end(error)
            self.session = None
        raise error


def _rank() -> int:
    try:
        import ignite.distributed as idist

        return int(idist.get_rank())
    except ImportError:
        return 0


def _world_size() -> int:
    try:
        import ignite.distributed as idist

        return int(idist.get_world_size())
    except ImportError:
        return 1


def _loss_of(output: Any) -> float | None:
    """The loss in an engine's output: a number, ``{"loss": ...}``, MONAI's list of per-item dicts."""
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], dict):
        output = output[0]
    if isinstance(output, dict):
        output = output.get("loss")
    return scalar(output) if output is not None else None


def _inputs_of(batch: Any) -> Any:
    """One input image of a batch (a dict with ``"image"``, ``(x, y)``, or MONAI's list of per-item
    dicts), for the ONNX example."""
    import torch

    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], dict):  # MONAI's decollated items
        item = batch[0].get("image", batch[0].get("img"))
        batch = item[None] if isinstance(item, torch.Tensor) else None
    elif isinstance(batch, dict):
        batch = batch.get("image", batch.get("img"))
    elif isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor) or batch.dim() not in (4, 5):
        return None
    first = batch[:1].detach().cpu()
    return first.as_tensor() if hasattr(first, "as_tensor") else first  # MONAI's MetaTensor as a plain tensor


def _saved_path(checkpoint: Any) -> Path | None:
    """The file an Ignite ``Checkpoint`` wrote last (saved to disk by ``DiskSaver``), or None."""
    name = getattr(checkpoint, "last_checkpoint", None)
    if name is None:
        return None
    folder = getattr(getattr(checkpoint, "save_handler", None), "dirname", None)
    path = Path(name)  # Ignite >= 0.5 names it within its folder already
    return path if path.exists() or folder is None else Path(folder) / path
