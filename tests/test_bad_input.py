"""Every user-facing entry point answers bad input with a clear error, exits non-zero, and
leaves nothing half-written."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from segtrack.cli import main
from testsupport.settings import TINY


def _sets(*items):
    return [arg for item in [*TINY, *items] for arg in ("--set", item)]


def _pairs(root, sizes=((8, 8, 8, 8),), values=(1,), names=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, ((ih, iw, mh, mw), value) in enumerate(zip(sizes, values)):
        name = names[i] if names else f"s{i}"
        Image.fromarray(np.zeros((ih, iw, 3), np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.full((mh, mw), value, np.uint8)).save(root / "masks" / f"{name}.png")


def _prepare(case, tmp):
    """Build the on-disk situation for a case; return extra CLI arguments."""
    data = tmp / "data"
    if case == "malformed_toml":
        (tmp / "bad.toml").write_text("[default.train\nepochs = 3\n")
        return ["--config", str(tmp / "bad.toml")]
    if case == "toml_without_environment":
        (tmp / "flat.toml").write_text("[train]\nepochs = 3\n")
        return ["--config", str(tmp / "flat.toml")]
    if case == "empty_folder":
        (data / "images").mkdir(parents=True)
        (data / "masks").mkdir()
    elif case == "mismatched_names":
        _pairs(data, sizes=[(8, 8, 8, 8)] * 2, values=(1, 1), names=["a", "b"])
        (data / "masks" / "b.png").rename(data / "masks" / "c.png")
    elif case == "mask_size":
        _pairs(data, sizes=[(8, 8, 8, 8), (8, 8, 4, 4)], values=(1, 1))
    elif case == "class_ids":
        _pairs(data, sizes=[(8, 8, 8, 8)] * 2, values=(1, 7))
    elif case == "unreadable_mask":
        _pairs(data, sizes=[(8, 8, 8, 8)] * 2, values=(1, 1))
        (data / "masks" / "s1.png").write_bytes(b"garbage")
    elif case in ("resume_folder", "config_folder"):
        (tmp / "folder").mkdir()
    elif case == "not_a_dir":
        (tmp / "blocker").write_text("a file where a folder should be")
    return []


CASES = [
    # (case id, extra args, message fragments)
    ("negative_epochs", ["train", *_sets("train.epochs=-1")], ["train.epochs = -1 is invalid", "integer >= 1"]),
    ("wrong_type", ["train", *_sets("train.lr='fast'")], ["train.lr = 'fast' is invalid", "a number > 0"]),
    ("bool_for_int", ["train", *_sets("train.batch_size=true")], ["train.batch_size = True is invalid"]),
    (
        "unknown_key",
        ["train", *_sets("train.ephocs=3")],
        ["train.ephocs: unknown setting", "did you mean train.epochs"],
    ),
    ("unknown_choice", ["train", *_sets("checkpoint.monitor='dice'")], ["checkpoint.monitor = 'dice'", "val_dice"]),
    (
        "unknown_section",
        ["train", *_sets("trian.epochs=3")],
        ["unknown settings section(s) 'trian'", "did you mean 'train'"],
    ),
    ("unknown_plugin_disabled", ["train", *_sets("plugins.disabled=['mlfow']")], ["unknown plugin(s) 'mlfow'"]),
    ("bad_set_syntax", ["train", "--set", "epochs"], ["--set 'epochs' is not SECTION.KEY=VALUE"]),
    ("unknown_env", ["train", "--env", "staging"], ["unknown environment 'staging'"]),
    ("missing_config", ["train", "--config", "nope.toml"], ["config file 'nope.toml' does not exist"]),
    ("malformed_toml", ["train"], ["is not valid TOML", "fix the syntax"]),
    ("toml_without_environment", ["train"], ["'train' are not an environment", "[default.train]"]),
    ("cuda_on_cpu", ["train", *_sets("train.device='cuda'")], ["no CUDA device is available"]),
    ("amp_on_cpu", ["train", *_sets("train.amp=true", "train.device='cpu'")], ["train.amp = true needs a CUDA device"]),
    ("folder_without_path", ["train", *_sets("data.source='folder'")], ["data.path is empty"]),
    ("missing_folder", ["train", *_sets("data.source='folder'", "data.path='nowhere'")], ["nowhere/images is missing"]),
    ("empty_folder", ["train", *_sets("data.source='folder'", "data.path='data'")], ["holds no images (.png"]),
    (
        "mismatched_names",
        ["train", *_sets("data.source='folder'", "data.path='data'")],
        ["image and mask names differ", "without mask ['b']", "without image ['c']"],
    ),
    (
        "mask_size",
        ["train", *_sets("data.source='folder'", "data.path='data'")],
        ["s1.png: the image is 8x8 but its mask is 4x4"],
    ),
    ("class_ids", ["train", *_sets("data.source='folder'", "data.path='data'")], ["class ids [7] outside 0..2"]),
    (
        "unreadable_mask",
        ["train", *_sets("data.source='folder'", "data.path='data'")],
        ["cannot read data/masks/s1.png"],
    ),
    ("too_few_samples", ["train", *_sets("data.num_samples=1")], ["data.num_samples = 1 is invalid"]),
    ("depth_vs_size", ["train", *_sets("data.image_size=20", "model.depth=3")], ["sides divisible by 8"]),
    ("too_many_folds", ["cv", "--folds", "40", *_sets()], ["40 folds need at least 40 samples"]),
    ("one_fold", ["cv", "--folds", "1", *_sets()], ["--folds 1 is invalid"]),
    (
        "not_a_dir",
        ["train", *_sets("checkpoint.dir='blocker/sub'")],
        ["checkpoint.dir = 'blocker/sub' is not a writable folder"],
    ),
    ("missing_checkpoint", ["train", "--resume", "gone.pt", *_sets()], ["checkpoint 'gone.pt' does not exist"]),
    ("resume_folder", ["train", "--resume", "folder", *_sets()], ["checkpoint 'folder' is a folder", "folder/last.pt"]),
    ("config_folder", ["train", "--config", "folder", *_sets()], ["config file 'folder' is a folder"]),
    ("zero_folds", ["cv", "--folds", "0", *_sets()], ["--folds 0 is invalid"]),
    ("infinite_lr", ["train", *_sets("train.lr=inf")], ["train.lr = inf is invalid", "a number > 0"]),
    ("nan_weight", ["train", *_sets("train.dice_weight=nan")], ["train.dice_weight = nan is invalid"]),
    (
        "run_name_path",
        ["train", *_sets("run.name='../../escaped'")],
        ["run.name = '../../escaped' is invalid", "a path is refused"],
    ),
    ("run_name_slash", ["train", *_sets("run.name='a/b'")], ["run.name = 'a/b' is invalid"]),
    ("model_name", ["train", *_sets("model.name='unte'")], ["model.name = 'unte' is not a known model"]),
    (
        "crop_sides",
        ["train", *_sets("data.crop=[64, 64, 64]")],
        ["data.crop = [64, 64, 64] has 3 sides but data.dims = 2"],
    ),
    ("normalize", ["train", *_sets("data.normalize='zscore'")], ["data.normalize = 'zscore' is invalid"]),
]


@pytest.mark.parametrize("case, args, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(case, args, fragments, tmp_path, capsys):
    extra = _prepare(case, tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    code = main([*args, *extra, "--set", "plugins.autoload=false"])
    err = capsys.readouterr().err
    assert code != 0
    for fragment in fragments:
        assert fragment in err, err
    assert "Traceback" not in err
    created = {p for p in tmp_path.rglob("*")} - before
    assert not created, f"left behind: {created}"


def _refused_line(key: str, allowed: str) -> re.Pattern[str]:
    # the value shown may hold the default's items too: Dynaconf merges a list of tables into a list
    return re.compile(rf"^  {re.escape(key)} = .*\{{'x': 1\}}.* is invalid: allowed is {re.escape(allowed)}$", re.M)


def test_every_core_setting_refuses_a_value_of_the_wrong_kind(tmp_path, capsys):
    """Proves every key of the core schema is checked (the list above covers a few by hand): each is
    given a list holding a table, which no core setting accepts, and the one error names each key,
    the value and what is allowed, with nothing written. A key whose check is dropped fails here."""
    from segtrack.config.core_schema import CORE_SCHEMA

    keys = list(CORE_SCHEMA)
    assert main(["train", *[a for s in keys for a in ("--set", f"{s.key}=[{{x = 1}}]")]]) == 2
    err = capsys.readouterr().err
    for setting in keys:
        assert _refused_line(setting.key, setting.allowed).search(err), setting.key
    assert "Traceback" not in err and not list(tmp_path.iterdir())


def test_plugins_disabled_read_before_the_check_refuses_a_value_of_the_wrong_kind(capsys):
    """plugins.disabled is read to build the plugin manager, before the settings are checked: a
    list holding a table there is the same one error, not a TypeError traceback."""
    assert main(["train", "--set", "plugins.disabled=[{x = 1}]"]) == 2
    assert re.search(r"^  plugins\.disabled = \[\{'x': 1\}\] is invalid", capsys.readouterr().err, re.M)
