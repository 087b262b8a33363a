"""Settings layers: defaults < project file < --config < env vars < --set."""

from __future__ import annotations

import pytest

from segtrack import ConfigError
from segtrack.config.secrets import secret_keys
from segtrack.config.settings import load_settings, resolved_dict


def test_layers_override_in_order(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "settings.toml").write_text(
        "[default.train]\nepochs = 4\nbatch_size = 2\nlr = 0.5\n[testing.train]\nepochs = 5\n"
    )
    (tmp_path / "extra.toml").write_text("[default.train]\nbatch_size = 3\nlr = 0.25\n")
    monkeypatch.setenv("SEGTRACK_TRAIN__LR", "0.125")
    cfg = resolved_dict(load_settings(tmp_path / "extra.toml", "testing", ["train.seed=7"], project_dir=tmp_path))
    assert cfg["train"]["epochs"] == 5  # environment table beats [default]
    assert cfg["train"]["batch_size"] == 3  # --config beats the project file
    assert cfg["train"]["lr"] == 0.125  # env var beats files
    assert cfg["train"]["seed"] == 7  # --set
    assert cfg["train"]["weight_decay"] == 0.0001  # built-in default


def test_env_switcher_and_set_parse_toml_values(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "settings.toml").write_text("[production.train]\nepochs = 50\n")
    monkeypatch.setenv("SEGTRACK_ENV", "production")
    cfg = resolved_dict(load_settings(project_dir=tmp_path, overrides=["plugins.disabled=['a', 'b']"]))
    assert cfg["train"]["epochs"] == 50 and cfg["plugins"]["disabled"] == ["a", "b"]


def test_all_problems_are_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(project_dir=tmp_path, overrides=["train.epochs=0", "data.val_fraction=1.5"])
    assert "train.epochs = 0" in str(info.value) and "data.val_fraction = 1.5" in str(info.value)


def test_secret_keys_are_listed(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / ".secrets.toml").write_text("[default.mlflow]\npassword = 'hunter2'\n")
    assert secret_keys(tmp_path) == {"mlflow.password"}


def test_repository_profiles_are_valid(monkeypatch):
    REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

    for env in ("development", "testing", "production"):
        load_settings(env=env, project_dir=REPO)


class _Budget:
    """A plugin declaring its section through settings_schema."""

    name = "budget"

    def __init__(self):
        self.seen = None

    from segtrack import hookimpl as _hookimpl

    @_hookimpl
    def settings_schema(self):
        from segtrack import Setting
        from segtrack.config.schema import is_number, is_str

        return [
            Setting("budget.minutes", "a number of minutes > 0", lambda v: is_number(v) and v > 0, default=60),
            Setting("budget.token", "a string", is_str, default="", secret=True),
        ]

    @_hookimpl
    def settings_loaded(self, settings):
        self.seen = settings["budget"]


def _trainer_with(plugin, settings_factory, *overrides):
    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.plugins.manager import get_plugin_manager

    settings = settings_factory(*overrides)
    manager = get_plugin_manager(settings, [plugin], autoload=False, disabled=["progress"])
    return SegmentationTrainer(settings, plugin_manager=manager)


def test_a_plugin_schema_fills_defaults_and_hands_one_read_only_mapping(settings_factory):
    plugin = _Budget()
    trainer = _trainer_with(plugin, settings_factory)
    assert dict(plugin.seen) == {"minutes": 60, "token": ""}
    assert trainer.config["budget"]["minutes"] == 60
    with pytest.raises(TypeError):
        plugin.seen["minutes"] = 1  # read-only


def test_a_plugin_schema_reports_every_problem_like_the_core(settings_factory):
    with pytest.raises(ConfigError) as error:
        _trainer_with(_Budget(), settings_factory, "budget.minutes=-5", "budget.minuts=3", "budget.token=7")
    message = str(error.value)
    assert "budget.minutes = -5 is invalid: allowed is a number of minutes > 0" in message
    assert "budget.minuts: unknown setting (did you mean budget.minutes?)" in message
    assert "budget.token = '***' is invalid" in message and "7" not in message.split("budget.token")[1][:12]
