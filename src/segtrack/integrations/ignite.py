"""segtrack's plugins under Ignite engines, MONAI's ``SupervisedTrainer`` among them: a handler that
drives one ``FitSession`` per ``engine.run``.

::

    handler = SegtrackHandler(evaluator=evaluator).attach(trainer)   # MONAI's SupervisedEvaluator, any Engine
    saver = Checkpoint({"trainer": trainer, "net": net, "segtrack": handler}, DiskSaver("ckpt", require_empty=False))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, saver)
    handler.checkpoints = (saver,)                      # its files become checkpoint_saved
    # resumed: Checkpoint.load_objects(...) before trainer.run() continues the same tracked run

- per iteration: the loss (``engine.state.output``: a number, ``{"loss": ...}``, or MONAI's list of
  per-item dicts) as ``train_batch_end`` at ``engine.state.iteration``;
- per epoch: ``train_loss`` (the epoch's mean), the trainer engine's own metrics, and the
  evaluator's metrics from its run this epoch (``epoch_end`` waits for it when it runs after this
  handler; an epoch it skips is recorded without them);
- state for Ignite's ``Checkpoint``: ``state_dict``/``load_state_dict``. A checkpoint written at
  an epoch's end holds that epoch (it is recorded first when the checkpoint asks for the state);
- an exception ends the run (``fit_exception``, ``fit_end``) before any other exception handler
  (MONAI's ``StatsHandler`` and ``CheckpointSaver`` re-raise, which stops Ignite's chain), and is
  raised again unless another handler takes it; SIGTERM ends it as interrupted;
- ``checkpoints``: Ignite ``Checkpoint`` objects whose files become ``checkpoint_saved`` ("best"
  for one with a ``score_function``, else "last"); the best one is exported to ONNX at the end;
- hooks fire on rank 0 (``idist.get_rank()``); a stop a plugin asks for there stops every rank; a
  plugin that raises is reported and training goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from segtrack.integrations.metrics import RunningMean, first_input, scalar, scalars
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
        *,
        evaluator: Any = None,
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
        self.session: FitSession | None = None  # the run going on now
        self.result: Any = None  # the last run's FitResult
        self._engine: Any = None
        self._state: dict[str, Any] | None = None  # restored from a checkpoint, or the last run's
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
        # first: Ignite stops at the first exception handler that raises (MONAI's re-raise)
        handlers = engine._event_handlers[Events.EXCEPTION_RAISED]
        handlers.insert(0, handlers.pop())
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self._evaluator_completed)
        return self

    # -- state for Ignite's Checkpoint ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self.session is None:
            return {"session": self._state} if self._state else {}
        self._record_due_epoch()  # a checkpoint at an epoch's end holds that epoch
        return {"session": self.session.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = state_dict.get("session")

    # -- the run -----------------------------------------------------------------------------------

    def _started(self, engine: Any) -> None:
        if _rank() != 0:
            return
        model = self._model if self._model is not None else getattr(engine, "network", None)
        loader = getattr(engine.state, "dataloader", None)
        self.session = FitSession(
            self._settings,
            self._plugins,
            model=model,
            run_name=self._run_name,
            resume_state=self._state if engine.state.epoch > 0 else None,  # Checkpoint.load_objects restored it
            train_data=loader if loader is not None else getattr(engine, "data_loader", None),
            val_data=getattr(self.evaluator, "data_loader", None) if self.evaluator is not None else None,
            epochs=engine.state.max_epochs or None,
            optimizer=getattr(engine, "optimizer", None),
            loss=getattr(engine, "loss_function", None),
            loop="ignite",
            handle_sigterm=True,  # neither Ignite nor MONAI handles SIGTERM: it ends the run as interrupted
            rank=0,
            world_size=_world_size(),
        )
        self._state, self._reported, self._pending, self.result = None, {}, None, None
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
            self._example = first_input(engine.state.batch)
        if loss is not None:
            optimizer = getattr(engine, "optimizer", None)
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else float("nan")
            self.session.batch_end(engine.state.iteration, loss, epoch=engine.state.epoch - 1, lr=lr)

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
        self._stop_everywhere(engine)

    def _stop_everywhere(self, engine: Any) -> None:
        """A stop asked on rank 0 (where hooks run) ends every rank's run after this epoch."""
        stop = self.session is not None and self.session.should_stop
        if _world_size() > 1:
            import ignite.distributed as idist

            stop = bool(idist.broadcast(int(stop), src=0))
        if stop:
            engine.terminate()

    def _record_due_epoch(self) -> None:
        """The epoch that just ended, if its checkpoint is being written before it was recorded."""
        from ignite.engine import Events

        engine = self._engine
        if engine is None or engine.last_event_name != Events.EPOCH_COMPLETED:
            return
        epoch = engine.state.epoch - 1
        ran_without_validation = self._pending == epoch  # this handler ran, the evaluator did not: a skipped epoch
        if ran_without_validation or (epoch > self._recorded_epoch and (self.evaluator is None or self._validated)):
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
        if engine.should_terminate and not self.session.should_stop:
            self.session.request_stop("engine.terminate() (e.g. EarlyStopping)")
        self._end(None)

    def _exception_raised(self, engine: Any, error: BaseException) -> None:
        from ignite.engine import Events

        if self.session is not None:
            self._end(error)
        # Ignite hands an exception to its handlers instead of raising it: raise it as Ignite would
        # without handlers, unless another handler (after this one) takes it
        if len(engine._event_handlers[Events.EXCEPTION_RAISED]) <= 1:
            raise error

    def _end(self, error: BaseException | None) -> None:
        """``fit_end``; the session is closed, its state kept for a checkpoint written afterwards."""
        assert self.session is not None
        self._state = self.session.state_dict()
        self.result = self.session.end(error)
        self.session = None


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


def _saved_path(checkpoint: Any) -> Path | None:
    """The file an Ignite ``Checkpoint`` wrote last (saved to disk by ``DiskSaver``), or None."""
    name = getattr(checkpoint, "last_checkpoint", None)
    if name is None:
        return None
    folder = getattr(getattr(checkpoint, "save_handler", None), "dirname", None)
    path = Path(name)  # Ignite >= 0.5 names it within its folder already
    return path if path.exists() or folder is None else Path(folder) / path
