"""Entry-point discovery through real installed distribution metadata."""

from __future__ import annotations

import json

import pytest

from segtrack import ConfigError, PluginLoadError, Setting, hookimpl, is_str
from segtrack.cli import main
from segtrack.plugins.manager import get_plugin_manager
from testsupport.plugins import first_party_plugins

GOOD = """
from segtrack import hookimpl

class Good:
    def __init__(self):
        self.seen = []

    @hookimpl
    def epoch_end(self, epoch):
        self.seen.append(epoch.epoch)
"""


def test_entry_point_plugin_is_discovered_and_fires(fake_dist, trainer_factory, settings_factory):
    fake_dist("segtrack-good", "good", "good_plugin", GOOD, "good_plugin:Good")
    from segtrack.loop.trainer import SegmentationTrainer

    manager = get_plugin_manager(settings_factory(), disabled=["progress", *first_party_plugins()])
    info = manager.plugin_info["good"]
    assert (info.source, info.distribution, info.version, info.hooks) == (
        "entry point",
        "segtrack-good",
        "1.2.3",
        ("epoch_end",),
    )
    trainer = SegmentationTrainer(settings_factory(), plugin_manager=manager)
    trainer.fit()
    assert manager.get_plugin("good").seen == [0, 1]


class Greeter:
    """Adds ``segtrack greet`` (``cli_commands``), which reads the plugin's own settings."""

    @hookimpl
    def settings_schema(self):
        return [Setting("greeter.word", "a string", is_str, default="hello")]

    @hookimpl
    def cli_commands(self, subparsers):
        parser = subparsers.add_parser("greet", help="print greeter.word and a name")
        parser.add_argument("name")
        parser.set_defaults(handler=lambda args, settings: print(settings["greeter"]["word"], args.name))


def test_an_entry_point_plugin_adds_a_command_that_reads_its_settings(fake_dist, capsys):
    fake_dist(
        "segtrack-greeter",
        "greeter",
        "greeter_plugin",
        "from test_plugin_loading import Greeter",
        "greeter_plugin:Greeter",
    )
    assert main(["greet", "you", "--set", "greeter.word='hi'"]) == 0
    assert capsys.readouterr().out == "hi you\n"
    with pytest.raises(SystemExit):  # the command goes with the plugin
        main(["greet", "you", "--set", "plugins.disabled=['greeter']"])
    assert "invalid choice: 'greet'" in capsys.readouterr().err


def test_each_manager_gets_a_fresh_instance(fake_dist, settings_factory):
    fake_dist("segtrack-good", "good", "good_plugin", GOOD, "good_plugin:Good")
    a = get_plugin_manager(settings_factory()).get_plugin("good")
    b = get_plugin_manager(settings_factory()).get_plugin("good")
    assert a is not b


def test_broken_plugin_is_skipped_with_its_name(fake_dist, settings_factory, caplog):
    fake_dist("segtrack-broken", "broken", "broken_plugin", "raise ImportError('no such dependency: foo')")
    manager = get_plugin_manager(settings_factory())
    assert "broken" not in manager.plugin_info
    assert manager.load_failures[0].name == "broken"
    assert "no such dependency: foo" in manager.load_failures[0].error
    assert "'broken'" in caplog.text and "failed to load" in caplog.text


def test_a_plugin_calling_sys_exit_on_import_is_skipped_like_any_failure(fake_dist, settings_factory):
    fake_dist("segtrack-quitter", "quitter", "quitter_plugin", "import sys\nsys.exit(3)")
    manager = get_plugin_manager(settings_factory())
    assert "quitter" not in manager.plugin_info
    assert [(f.name, f.error) for f in manager.load_failures] == [
        ("quitter", "called sys.exit(3) while being imported")
    ]


def test_a_misspelled_hook_of_an_entry_point_plugin_names_the_plugin(fake_dist, settings_factory):
    fake_dist(
        "segtrack-typo",
        "typo-plugin",
        "typo_plugin",
        "from segtrack import hookimpl\nclass Plugin:\n    @hookimpl\n    def fit_ned(self):\n        pass\n",
        "typo_plugin:Plugin",
    )
    with pytest.raises(PluginLoadError, match=r"plugin 'typo-plugin' implements 'fit_ned'.*did you mean 'fit_end'"):
        get_plugin_manager(settings_factory())


def test_broken_plugin_is_fatal_when_strict(fake_dist, settings_factory):
    fake_dist("segtrack-broken", "broken", "broken_plugin", "raise ImportError('no such dependency: foo')")
    with pytest.raises(PluginLoadError, match="'broken'.*failed to load.*plugins.disabled"):
        get_plugin_manager(settings_factory("plugins.strict=true"))


def test_disabled_plugin_is_never_imported(fake_dist, settings_factory, tmp_path):
    marker = tmp_path / "imported"
    fake_dist("segtrack-spy", "spy", "spy_plugin", f"open({str(marker)!r}, 'w').close()")
    manager = get_plugin_manager(settings_factory('plugins.disabled=["spy"]'))
    assert "spy" not in manager.plugin_info and not marker.exists()
    get_plugin_manager(settings_factory("plugins.autoload=false"))
    assert not marker.exists()
    get_plugin_manager(settings_factory())
    assert marker.exists()


def test_unknown_name_in_disabled_is_an_error(settings_factory):
    with pytest.raises(ConfigError, match=r"unknown plugin\(s\) 'progres' \(did you mean 'progress'\?\)"):
        get_plugin_manager(settings_factory('plugins.disabled=["progres"]'))


def test_misspelled_hook_fails_loudly(settings_factory):
    from segtrack import hookimpl

    class Typo:
        @hookimpl
        def epoch_ended(self, epoch):
            pass

    with pytest.raises(
        PluginLoadError,
        match=r"plugin 'typo' implements 'epoch_ended', which is not a segtrack "
        r"hook: did you mean 'epoch_end'\?",
    ):
        get_plugin_manager(settings_factory(), [Typo()])


def test_unknown_argument_name_fails_at_registration(settings_factory):
    from segtrack import hookimpl

    class WrongArg:
        @hookimpl
        def epoch_end(self, epochs):
            pass

    with pytest.raises(PluginLoadError, match=r"plugin 'wrongarg': .*epochs"):
        get_plugin_manager(settings_factory(), [WrongArg()])


def test_wrapper_impls_are_refused(settings_factory):
    from segtrack import hookimpl

    class Wrapper:
        @hookimpl(wrapper=True)
        def epoch_end(self, epoch):
            return (yield)

    with pytest.raises(PluginLoadError, match="wrapper"):
        get_plugin_manager(settings_factory(), [Wrapper()])


def test_env_escape_hatch_loads_no_third_party_code(fake_dist, tmp_path, monkeypatch):
    """SEGTRACK_PLUGINS__AUTOLOAD=false through the real CLI: the spy module never runs."""
    from segtrack.cli import main

    marker = tmp_path / "imported"
    fake_dist("segtrack-spy", "spy", "spy_plugin", f"open({str(marker)!r}, 'w').close()")
    monkeypatch.setenv("SEGTRACK_PLUGINS__AUTOLOAD", "false")
    assert main(["plugins"]) == 0
    assert not marker.exists()


def test_plugins_command_lists_versions_hooks_and_failures(fake_dist, capsys):
    from segtrack.cli import main

    fake_dist("segtrack-good", "good", "good_plugin", GOOD, "good_plugin:Good")
    fake_dist("segtrack-broken", "broken", "broken_plugin", "raise ImportError('missing foo')")
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    good = next(p for p in listing["plugins"] if p["name"] == "good")
    assert good == {
        "name": "good",
        "source": "entry point",
        "distribution": "segtrack-good",
        "version": "1.2.3",
        "hooks": ["epoch_end"],
    }
    assert listing["failed"][0]["name"] == "broken" and "missing foo" in listing["failed"][0]["error"]
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    assert "good  (segtrack-good 1.2.3, entry point)" in text and "broken  FAILED TO LOAD" in text


def test_plugin_settings_section_must_name_a_plugin(trainer_factory):
    with pytest.raises(ConfigError, match=r"unknown settings section\(s\) 'mlflw'"):
        trainer_factory("mlflw.tracking_uri=1")


def test_plugin_can_reject_its_settings(settings_factory):
    from segtrack import hookimpl
    from segtrack.loop.trainer import SegmentationTrainer

    class Picky:
        name = "picky"

        @hookimpl
        def settings_loaded(self, settings):
            if settings.get("picky", {}).get("level", 0) > 3:
                raise ConfigError("picky.level must be <= 3")

    settings = settings_factory("picky.level=9")
    with pytest.raises(ConfigError, match="picky.level"):
        SegmentationTrainer(settings, plugin_manager=get_plugin_manager(settings, [Picky()], autoload=False))
