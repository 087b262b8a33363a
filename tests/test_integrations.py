"""The framework adapters drive the same hook path as the trainer: Lightning's callback and the
Ignite handler (under MONAI's own engines) fire the same records, keep their state in the
framework's checkpoints, and survive a raising plugin."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from segtrack import EpochResult, RunInfo, hookimpl
from testsupport.plugins import Recorder

SETTINGS = {"plugins": {"autoload": False, "disabled": ["progress"]}, "export": {"dir": "exports"}}


class BrokenAtEpochEnd:
    name = "broken"

    @hookimpl
    def epoch_end(self, epoch):
        raise RuntimeError("tracker bug")


def squares(count: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, 16, 16, dtype=torch.long)
    for i in range(count):
        y, x = torch.randint(0, 10, (2,), generator=g).tolist()
        masks[i, y : y + 6, x : x + 6] = 1
    return TensorDataset(masks[:, None].float() + 0.2 * torch.randn(count, 1, 16, 16, generator=g), masks)


def epoch_records(recorder: Recorder) -> list[EpochResult]:
    return [kw["epoch"] for name, kw in recorder.calls if name == "epoch_end"]


# -- Lightning ----------------------------------------------------------------------------------------

pl = pytest.importorskip("lightning.pytorch")


class Segmenter(pl.LightningModule):
    def __init__(self, width: int = 4, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self(batch[0])
        predicted, truth = logits.argmax(1) == 1, batch[1] == 1
        self.log("val_dice", 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()).clamp(min=1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def lightning_fit(epochs: int, plugins, ckpt_path=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from segtrack.integrations.lightning import SegtrackCallback

    pl.seed_everything(0, verbose=False)
    callback = SegtrackCallback(SETTINGS, plugins, run_name="lit")
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[ModelCheckpoint(dirpath="ckpt", monitor="val_dice", mode="max", save_last=True), callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
    )
    trainer.fit(
        Segmenter(),
        DataLoader(squares(16, 1), batch_size=4),
        DataLoader(squares(8, 2), batch_size=4),
        ckpt_path=ckpt_path,
    )
    return callback


def test_a_lightning_fit_fires_one_epoch_end_per_epoch_with_what_the_module_logged():
    recorder = Recorder()
    callback = lightning_fit(2, [recorder, BrokenAtEpochEnd()])
    names = recorder.names()
    assert names[:2] == ["settings_loaded", "fit_start"] and names[-1] == "fit_end"
    assert names.count("train_batch_end") == 8  # the sanity check fires nothing
    epochs = epoch_records(recorder)
    assert [e.epoch for e in epochs] == [0, 1] and [e.global_step for e in epochs] == [4, 8]
    assert {"train_loss", "val_dice", "lr"} <= set(epochs[0].metrics)
    assert not any(k.endswith(("_step", "_epoch")) for k in epochs[0].metrics)
    run: RunInfo = recorder.calls[1][1]["run"]
    assert run.loop == "lightning" and run.max_epochs == 2 and run.num_train == 16 and run.num_val == 8
    assert run.config["width"] == 4 and run.config["train"]["optimizer"]["momentum"] == 0.9
    kinds = {kw["checkpoint"].kind for name, kw in recorder.calls if name == "checkpoint_saved"}
    assert kinds == {"best", "last"}
    result = recorder.calls[-1][1]["result"]
    assert result.status == "completed" and result.export is not None and result.export.parity_ok
    assert [(f.plugin, f.hook, f.count) for f in result.plugin_failures] == [("broken", "epoch_end", 2)]
    assert callback.result == result.__class__(
        **{**result.__dict__, "plugin_failures": callback.result.plugin_failures}
    )
    assert callback.session is None  # closed: a later validate() records nothing


def test_validating_after_the_fit_records_no_more_epochs():
    recorder = Recorder()
    callback = lightning_fit(1, [recorder])
    ended = len(recorder.calls)
    trainer = pl.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(Segmenter(), DataLoader(squares(8, 2), batch_size=4), verbose=False)
    assert len(recorder.calls) == ended


def test_a_resumed_lightning_fit_continues_from_the_checkpoints_state():
    lightning_fit(2, [Recorder()])
    recorder = Recorder()
    lightning_fit(3, [recorder], ckpt_path="ckpt/last.ckpt")
    assert recorder.names()[:3] == ["settings_loaded", "load_state_dict", "fit_start"]
    assert recorder.calls[2][1]["run"].start_epoch == 2
    assert [e.epoch for e in epoch_records(recorder)] == [2]
    result = recorder.calls[-1][1]["result"]
    assert result.epochs_completed == 3 and result.best_epoch in (0, 1, 2)


def test_a_failing_lightning_fit_is_recorded_as_failed():
    class Exploding(Segmenter):
        def training_step(self, batch, batch_idx):
            if self.current_epoch == 1:
                raise ValueError("diverged")
            return super().training_step(batch, batch_idx)

    from segtrack.integrations.lightning import SegtrackCallback

    recorder = Recorder()
    trainer = pl.Trainer(
        max_epochs=3, callbacks=[SegtrackCallback(SETTINGS, [recorder])], logger=False, enable_progress_bar=False
    )
    with pytest.raises(ValueError, match="diverged"):
        trainer.fit(Exploding(), DataLoader(squares(8, 1), batch_size=4), DataLoader(squares(4, 2), batch_size=4))
    assert recorder.names()[-2:] == ["fit_exception", "fit_end"]
    result = recorder.calls[-1][1]["result"]
    assert result.status == "failed" and result.epochs_completed == 1 and "diverged" in result.error


# -- MONAI's engines (Ignite) ------------------------------------------------------------------------


def monai_engines(epochs: int, plugins):
    pytest.importorskip("ignite")
    from ignite.engine import Events
    from ignite.handlers import Checkpoint, DiskSaver
    from monai.data import DataLoader as MonaiLoader
    from monai.data import Dataset
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import MeanDice, ValidationHandler, from_engine
    from monai.networks.nets import UNet
    from monai.transforms import AsDiscreted

    from segtrack.integrations.ignite import SegtrackHandler

    torch.manual_seed(0)
    items = [{"image": img.numpy(), "label": (mask[None] == 1).float().numpy()} for img, mask in squares(12, 3)]
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(4, 8), strides=(2,))
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=MonaiLoader(Dataset(items[8:]), batch_size=2),
        network=net,
        postprocessing=AsDiscreted(keys="pred", threshold=0.0),
        key_val_metric={"val_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=MonaiLoader(Dataset(items[:8]), batch_size=4),
        network=net,
        optimizer=optimizer,
        loss_function=torch.nn.BCEWithLogitsLoss(),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1)],
    )
    handler = SegtrackHandler(SETTINGS, plugins, evaluator=evaluator, run_name="engine")
    saver = Checkpoint({"trainer": trainer, "net": net, "segtrack": handler}, DiskSaver("ckpt", require_empty=False))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, saver)  # before the handler: it asks for the state first
    handler.checkpoints = (saver,)
    handler.attach(trainer)
    return trainer, handler, saver, net


def test_monai_engines_fire_one_epoch_end_per_epoch_with_the_evaluators_metrics():
    recorder = Recorder()
    trainer, _, saver, _ = monai_engines(2, [recorder, BrokenAtEpochEnd()])
    trainer.run()
    epochs = epoch_records(recorder)
    assert [e.epoch for e in epochs] == [0, 1] and [e.global_step for e in epochs] == [2, 4]
    assert {"train_loss", "val_dice", "lr"} <= set(epochs[0].metrics)
    # the checkpoint written at each epoch's end holds that epoch, though it asked before the handler ran
    saved = torch.load(saver.last_checkpoint, weights_only=False)["segtrack"]["session"]
    assert saved["best"]["last_epoch"] == 1
    run = recorder.calls[1][1]["run"]
    assert run.loop == "ignite" and run.model_name == "monai.networks.nets.unet.UNet"
    assert run.config["train"]["loss"]["class"] == "torch.nn.modules.loss.BCEWithLogitsLoss"
    assert run.fingerprint_kind == "inputs" and run.train_sha256 and run.val_sha256
    result = recorder.calls[-1][1]["result"]
    assert result.status == "completed" and [(f.plugin, f.count) for f in result.plugin_failures] == [("broken", 2)]


def test_resumed_monai_engines_continue_from_the_checkpoints_state():
    from ignite.handlers import Checkpoint

    trainer, _, saver, _ = monai_engines(2, [Recorder()])
    trainer.run()
    path = saver.last_checkpoint
    recorder = Recorder()
    trainer, handler, _, net = monai_engines(3, [recorder])
    Checkpoint.load_objects({"trainer": trainer, "net": net, "segtrack": handler}, str(path))
    trainer.state.max_epochs = 3
    trainer.run()
    assert recorder.names()[:3] == ["settings_loaded", "load_state_dict", "fit_start"]
    assert [e.epoch for e in epoch_records(recorder)] == [2]
    assert recorder.calls[-1][1]["result"].epochs_completed == 3


def test_a_failing_engine_is_recorded_and_its_error_still_raised():
    from monai.handlers import StatsHandler, from_engine

    recorder = Recorder()
    trainer, *_ = monai_engines(2, [recorder])
    StatsHandler(name="engine-stats", output_transform=from_engine(["loss"], first=True)).attach(
        trainer
    )  # MONAI's re-raise: Ignite runs no exception handler after it

    def explode(engine):
        raise RuntimeError("loader died")

    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), explode)
    with pytest.raises(RuntimeError, match="loader died"):
        trainer.run()
    assert recorder.names()[-2:] == ["fit_exception", "fit_end"]
    assert recorder.calls[-1][1]["result"].status == "failed"


def test_importing_segtrack_imports_no_framework():
    frameworks = "('lightning', 'ignite', 'pytorch_lightning')"
    loaded = f"[m for m in sys.modules if m.split('.')[0] in {frameworks}]"
    code = f"import sys, segtrack; segtrack.FitSession; print({loaded})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
