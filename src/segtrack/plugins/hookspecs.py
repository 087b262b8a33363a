"""Every hook segtrack calls, grouped by phase.

Conventions for every hook below:

* A fit's hooks (``fit_start`` to ``fit_end``) are emitted through one path,
  ``segtrack.FitSession``, whichever loop runs the fit: ``SegmentationTrainer``, a hand-written loop,
  or an adapter of ``segtrack.integrations`` (Lightning, Ignite/MONAI engines). The trainer's own
  phases, cross-validation, studies, settings and the CLI call the rest (docs/architecture.md lists
  who calls which). Always with keyword arguments; an implementation takes only the arguments it
  needs, by name, without defaults.
* Unless a hook says otherwise it fires on rank 0 only under ``torchrun``.
* Each implementation is isolated: when it raises, segtrack reports the error once per plugin and
  hook (with the plugin's name and traceback), counts it in ``FitResult.plugin_failures`` and keeps
  training; the other plugins still run. With ``plugins.strict = true`` the first error stops the
  fit instead (``PluginHookError``, the fit ends with status ``failed``). The only exception that is
  never swallowed is ``segtrack.ConfigError`` from ``settings_loaded``.
* No hook stops training by raising. A plugin that wants to stop (early stopping, a budget) calls
  ``trainer.request_stop(reason)``; the fit finishes the current epoch, saves its checkpoints and
  ends with status ``stopped``.
* ``trainer`` is the loop running the fit, a ``segtrack.Loop``: the ``SegmentationTrainer`` or the
  ``FitSession`` of another loop. Plugins may read ``trainer.settings``, ``trainer.model``,
  ``trainer.device``, ``trainer.epoch``, ``trainer.batches_per_epoch`` and ``trainer.stop_reason``
  and call ``trainer.request_stop``; everything else on it is internal (``RunInfo.loop`` says which
  loop it is).
* hookwrappers are not supported: each implementation is called on its own.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("segtrack")

# -- configuration and command line -------------------------------------------------------------


@hookspec
def settings_schema():
    """Declare this plugin's settings section, checked by segtrack with the core's.

    Fires once per trainer and once per CLI command (on every rank), right after plugins are
    loaded and before ``settings_loaded``.

    :return: a sequence of ``segtrack.Setting``, keys ``"<plugin name>.<key>"`` (the section is
        the plugin's entry-point name). segtrack refuses unknown keys in that section, fills in
        defaults, and reports every problem in one error (key, value given, what is allowed);
        ``secret=True`` keys are never shown, logged or stored by segtrack.
    :raises: a raising implementation is reported as this plugin's failure, and its section is
        then checked by nothing.
    """


@hookspec
def settings_loaded(settings):
    """Read (and check further) this plugin's settings before any work starts.

    Fires once per trainer (on every rank) after segtrack validated its own sections and every
    declared plugin schema, and before ``fit_start`` or ``cross_validation_start``.

    :param settings: the resolved settings as one read-only mapping (section -> key -> value),
        plugin defaults filled in from ``settings_schema``.
    :return: ignored.
    :raises segtrack.ConfigError: rejects the settings; this is fatal, propagates to the caller and
        the CLI exits with status 2 before training. Any other exception is isolated as usual.
    """


@hookspec
def cli_commands(subparsers):
    """Add subcommands to the ``segtrack`` command line.

    Fires when the CLI builds its parser, before arguments are parsed (no trainer exists).

    :param subparsers: the ``argparse`` subparsers action of ``segtrack``. Call
        ``subparsers.add_parser(name, help=...)`` and ``parser.set_defaults(handler=func)``;
        ``func(args, settings)`` runs the command and returns an exit code (``None`` means 0).
    :return: ignored.
    :raises: a plugin that raises here is reported and its commands are missing; other commands
        still work.
    """


# -- one fit ------------------------------------------------------------------------------------


@hookspec
def fit_start(trainer, run):
    """A fit begins.

    Fires after the model, data and optimizer are ready (and a checkpoint restored, when
    resuming, including every plugin's ``load_state_dict``), before the first epoch.

    :param trainer: the loop running the fit (``segtrack.Loop``).
    :param run: ``RunInfo``: run name, resolved config, fold, ranks, dataset fingerprints,
        ``start_epoch`` and ``resumed_from``. With ``fingerprint_kind == "loaded"`` the two
        fingerprints are ``""`` here; the ``run`` of the first ``validation_end`` on carries them.
    :return: ignored.
    :raises: isolated (see the module docs).
    """


@hookspec
def epoch_start(trainer, run, epoch):
    """An epoch begins.

    Fires before the first training batch of each epoch, after ``fit_start``.

    :param trainer: the loop running the fit (``segtrack.Loop``).
    :param run: ``RunInfo`` of this fit.
    :param epoch: the 0-based epoch index.
    :return: ignored.
    :raises: isolated.
    """


@hookspec
def train_batch_end(trainer, run, step):
    """A training batch finished.

    Fires after every training batch's backward pass (and after ``optimizer.step()`` when the batch
    ends a group of ``train.accumulate`` batches; with the default of 1, after every step), between
    ``epoch_start`` and ``validation_end``. A batch with no labelled pixel, or whose loss was not
    finite and was skipped, fires nothing. It is the hot path: keep it cheap, and do slow work
    (I/O, network) off the training thread.

    :param trainer: the loop running the fit (``segtrack.Loop``).
    :param run: ``RunInfo`` of this fit.
    :param step: ``StepResult``: epoch, batch index, global step, loss, learning rate.
    :return: ignored.
    :raises: isolated.
    """


@hookspec
def validation_batch_end(trainer, run, batch):
    """One validation batch went through the model.

    Fires after each validation batch's forward pass, before ``validation_end`` of the same epoch,
    only when some plugin implements it (the loop skips the call otherwise). Use it to accumulate
    a metric of your own, then return it from ``validation_metrics``. Under ``torchrun`` it fires
    on rank 0 for every batch of every rank: rank 0's own as they are computed, then the other
    ranks' (sent to rank 0 after the pass, on the CPU, numbered after rank 0's), so a metric
    summed over batches is the number one process would compute. With ``infer.roi_size`` set the
    logits are the blended windows of whole images.

    :param trainer: the loop running the fit (``segtrack.Loop``).
    :param run: ``RunInfo`` of this fit.
    :param batch: ``ValidationBatch``: epoch, batch index, and the batch's images, masks (-1 where
        ignored), logits and predictions as tensors (on the training device, or on the CPU: another
        rank's batch, or ``infer.output_device = "cpu"`` with windows); do not modify them.
    :return: ignored.
    :raises: isolated.
    """


@hookspec
def validation_metrics(trainer, run, result):
    """Contribute metrics of this plugin to the epoch.

    Fires after ``validation_end`` and before ``epoch_end`` of the same epoch.

    :param trainer: the loop running the fit (``segtrack.Loop``).
    :param run: ``RunInfo`` of this fit.
    :param result: ``ValidationResult`` of this epoch's validation pass.
    :return: a mapping of metric name to float (or ``None``). The values join the epoch's metrics:
        ``EpochResult.metrics`` and ``FitResult``, every tracking plugin logs them, and any of
        them may be ``checkpoint.monitor``. A name that is already taken, or a value that is not a
        number, is reported as this plugin's failure and left out. Under ``torchrun`` the values
        computed on rank 0 are sent to every rank, so all ranks agree on the best epoch.
    :raises: isolated; the plugin contributes nothing that epoch. If ``checkpoint.monitor`` is one
        of its metrics, that epoch cannot be the best one (a warning says so) and the fit goes on;
        ``best.pt`` stays the best epoch among those that have the metric.
    """


@hookspec
def validation_end(trainer, run, result):
    """The validation pass of an epoch finished.

    Fires after the last validation batch, before ``epoch_end`` of the same epoch.

    :param trainer: the loop running the fit (``segtrack.Loop``).
    :param run: ``RunInfo`` of this fit.
    :param result: ``ValidationResult``: loss, Dice, IoU, per-class Dice, and a few fixed
        validation samples with predictions (for overlays).
    :return: ignored.
    :raises: isolated.
    """


@hookspec
def epoch_end(trainer, run, epoch):
    """An epoch finished.

    Fires after ``validation_end`` and after the learning-rate scheduler stepped, before the
    epoch's checkpoints are written (so ``checkpoint_saved`` follows it).

    :param trainer: the running trainer; ``trainer.request_stop(reason)`` ends the fit after
        this epoch's checkpoints.
    :param run: ``RunInfo`` of this fit.
    :param epoch: ``EpochResult``: ``train_loss``, ``val_loss``, ``val_dice``, ``val_iou``,
        ``lr``, whether it is the best epoch so far, best value and epoch, and ``global_step``
        (training batches so far: the step a tracker logs the epoch's metrics at, so they overlay
        per-step curves).
    :return: ignored.
    :raises: isolated.
    """


@hookspec
def checkpoint_saved(trainer, run, checkpoint):
    """A checkpoint file was written atomically (temp file, then rename).

    Fires after ``epoch_end``, once per file written: ``best`` when the monitored metric
    improved, then ``last`` every epoch (and ``epoch`` snapshots when ``checkpoint.keep > 0``).

    :param trainer: the loop running the fit (``segtrack.Loop``).
    :param run: ``RunInfo`` of this fit.
    :param checkpoint: ``CheckpointInfo``: path, kind, epoch, monitored value, size.
    :return: ignored.
    :raises: isolated.
    """


@hookspec
def model_exported(trainer, run, export):
    """The best model was exported.

    Fires once after the last epoch, before ``fit_end``, when ``export.enabled`` is true and the
    export succeeded. The parity check in onnxruntime has already run.

    :param trainer: the loop running the fit (``segtrack.Loop``).
    :param run: ``RunInfo`` of this fit.
    :param export: ``ExportInfo``: file path, opset, epoch of the weights, max abs difference.
    :return: ignored.
    :raises: isolated.
    """


@hookspec
def fit_exception(trainer, run, error):
    """The fit raised or was interrupted.

    Fires once when an exception leaves the training loop (including ``KeyboardInterrupt``
    and SIGTERM, which segtrack turns into ``KeyboardInterrupt``), before ``fit_end``. The
    original exception propagates after ``fit_end``. Under torchrun, a SIGTERM that arrives
    after another rank on this machine died becomes ``segtrack.errors.PeerLost`` (a
    ``KeyboardInterrupt``) and the fit's status is ``failed``.

    :param trainer: the loop running the fit (``segtrack.Loop``).
    :param run: ``RunInfo`` of this fit.
    :param error: the exception.
    :return: ignored.
    :raises: isolated; it never replaces the original exception.
    """


@hookspec
def fit_end(trainer, run, result):
    """A fit ended, whatever the outcome.

    Fires last, exactly once per ``fit_start``, on success, on a requested stop, after
    ``fit_exception`` on failure. Close runs and flush buffers here.

    :param trainer: the loop running the fit (``segtrack.Loop``).
    :param run: ``RunInfo`` of this fit.
    :param result: ``FitResult``: status (``completed``, ``stopped``, ``failed``,
        ``interrupted``), epochs completed, best value and epoch, checkpoint paths, export, plugin
        failures so far.
    :return: ignored.
    :raises: isolated. Each implementation is bounded by ``plugins.fit_end_timeout`` seconds;
        one that takes longer is reported and left behind in a daemon thread. A plugin with a
        bound of its own (a tracker draining its queue) sets a ``fit_end_timeout`` attribute
        (seconds); the larger of the two applies to it.
    """


# -- cross-validation ---------------------------------------------------------------------------


@hookspec
def cross_validation_start(trainer, info):
    """A k-fold cross-validation begins.

    Fires once before the first fold's ``fit_start``.

    :param trainer: the trainer that will run every fold.
    :param info: ``CrossValidationInfo``: cv id (also in each fold's ``RunInfo.cv_id``), number
        of folds, resolved config, run name.
    :return: ignored.
    :raises: isolated.
    """


@hookspec
def cross_validation_end(trainer, result):
    """A k-fold cross-validation ended.

    Fires once after the last fold's ``fit_end``, also when a fold failed (then ``result``
    holds the folds that ran, and the exception propagates afterwards).

    :param trainer: the trainer that ran the folds.
    :param result: ``CrossValidationResult``: every fold's ``FitResult`` and, per epoch
        metric, mean, std, min and max over folds (each fold at its best epoch).
    :return: ignored.
    :raises: isolated.
    """


# -- studies (hyperparameter search) ------------------------------------------------------------


@hookspec
def study_start(study):
    """A study begins: ``run_study`` (e.g. ``segtrack sweep``) will run trials, each a fit or a
    cross-validation of the base settings with a few keys changed.

    Fires once per process that runs (or joins) the study, before its first trial's trainer is
    built. Each trial's fits carry ``RunInfo.study_id`` and ``RunInfo.trial`` (and a CV trial's
    ``CrossValidationInfo`` the same), so a tracking plugin can nest them.

    :param study: ``StudyInfo``: study name, id, base config, search space, the searching plugin's
        attributes (sampler, pruner, storage), objective and direction, folds, run name.
    :return: ignored.
    :raises: isolated.
    """


@hookspec
def trial_links(study_id, number):
    """Where a trial's records live, for the searching plugin to keep with the trial.

    Fires once per trial, after its last ``fit_end`` (or ``cross_validation_end``, or its failure
    or interrupt) and before the searching plugin records the verdict, then ``trial_end``. A
    tracking plugin answers with its run's identity, so that a study's trials lead to their runs
    (segtrack-optuna stores the answers as the trial's user attributes).

    :param study_id: the study's id, shared by every process that joins it (``StudyInfo.study_id``).
    :param number: the trial's number in the study.
    :return: a mapping of short names to strings (e.g. ``{"mlflow.run_id": "..."}``), or None.
        Keys should start with the plugin's own prefix; no secret belongs in them.
    :raises: isolated; the trial is recorded without this plugin's links.
    """


@hookspec
def trial_end(trial):
    """One trial of a study ended: completed, pruned or failed.

    Fires once per trial, after its last ``fit_end`` (or ``cross_validation_end``); also for a
    trial that failed before any fit began (then no ``fit_start`` fired for it), and for the
    trial a Ctrl-C interrupted (``state`` "failed"), before ``study_end``.

    :param trial: ``TrialResult``: number, params (setting key -> value), state, objective value,
        epochs, error, the fit or CV result, and the study's best trial so far.
    :return: ignored.
    :raises: isolated.
    """


@hookspec
def study_end(result):
    """This process's share of a study ended.

    Fires once, after the last ``trial_end``: when no trial is left to run, or on Ctrl-C (then
    the interrupt propagates afterwards).

    :param result: ``StudyResult``: status ("completed" or "interrupted"), the trials this
        process ran, the study's best trial, value and params.
    :return: ignored.
    :raises: isolated.
    """


# -- plugin state in checkpoints ----------------------------------------------------------------


@hookspec
def state_dict():
    """Return this plugin's state to store in the checkpoint.

    Fires each time a checkpoint is written, just before it is written. The value is stored
    under the plugin's name, and handed back to this plugin only, through ``load_state_dict``.

    :return: plain data (dict, list, str, int, float, bool, None), loadable with
        ``torch.load(weights_only=True)``; ``None`` stores nothing.
    :raises: isolated; the checkpoint is written without this plugin's state.
    """


@hookspec
def load_state_dict(state):
    """Restore this plugin's state from a checkpoint.

    Fires when a fit resumes, before ``fit_start``, only for plugins whose state the checkpoint
    holds.

    :param state: what this plugin's ``state_dict`` returned.
    :return: ignored.
    :raises: isolated.
    """
