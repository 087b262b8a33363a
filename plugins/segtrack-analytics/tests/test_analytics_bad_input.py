"""What is not a readable store, and a plot that cannot be written: one sentence, exit 2, nothing
written. In the training loop an unreadable store costs one warning line, never a plugin failure."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from segtrack.cli import main
from testsupport.analytics_stores import populate
from testsupport.ports import free_port
from testsupport.settings import cli_sets
from testsupport.stores import temporary_postgres_database

COMMANDS = [
    ["list"],
    ["query", "SELECT 1"],
    ["summary", "--metric", "val_dice"],
    ["top", "--metric", "val_dice"],
    ["plot", "--metric", "val_dice"],
]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("segtrack: error: ") and err.count("\n") == 1, err
    assert all(f in err for f in fragments), err
    return err


def _sqlite_with_a_table(name: str) -> str:
    with contextlib.closing(sqlite3.connect(name)) as con:
        con.execute("CREATE TABLE notes (text TEXT)")
        con.commit()
    return f"sqlite:///{name}"


def _random_bytes() -> str:
    Path("noise.db").write_bytes(os.urandom(8192))
    return "sqlite:///noise.db"


STORES = {
    "dead PostgreSQL": (
        lambda stack: f"postgresql://postgres@127.0.0.1:{free_port()}/nope",
        "cannot reach the PostgreSQL store postgresql://postgres@127.0.0.1:",
    ),
    "PostgreSQL database without MLflow": (
        lambda stack: stack.enter_context(temporary_postgres_database()),
        "is a database but not an MLflow store (it has none of MLflow's tables)",
    ),
    "dead server": (
        lambda stack: f"http://127.0.0.1:{free_port()}",
        "cannot reach the tracking server http://127.0.0.1:",
    ),
    "SQLite without MLflow": (
        lambda stack: _sqlite_with_a_table("notes.db"),
        "notes.db is a database but not an MLflow store (it has none of MLflow's tables)",
    ),
    # a '?' in the name once ended SQLite's file name early: the read created a file named 'runs'
    "SQLite named with a '?'": (lambda stack: _sqlite_with_a_table("runs?v2.db"), "runs?v2.db is a database but not"),
    "random bytes": (lambda stack: _random_bytes(), "noise.db is not an SQLite database"),
    "missing SQLite file": (lambda stack: "sqlite:///missing.db", "no MLflow store at missing.db"),
}


@pytest.mark.parametrize("store", STORES)
def test_runs_commands_on_what_is_not_a_store(store, tmp_path, capsys):
    make, message = STORES[store]
    with contextlib.ExitStack() as stack:
        uri = make(stack)
        before = _files(tmp_path)
        for command in COMMANDS:
            assert main(["runs", *command, "--tracking-uri", uri]) == 2, command
            _one_error(capsys, message)
        assert _files(tmp_path) == before  # no table, no new file, no cache, no plot


@pytest.mark.parametrize("dead", ["postgresql://postgres@127.0.0.1:{port}/nope", "http://127.0.0.1:{port}"])
def test_fit_end_on_a_dead_store_is_one_warning(dead, capsys, caplog):
    uri = dead.format(port=free_port())
    assert main(["train", *cli_sets(uri, "plugins.disabled=['mlflow', 'progress']")]) == 0
    everything = capsys.readouterr().err + caplog.text
    (line,) = [m for m in caplog.messages if m.startswith("analytics:")]
    assert line.startswith("analytics: cannot rank this run: cannot reach ") and line.endswith(
        "`segtrack runs top --metric best_val_dice` works once the store is back"
    )
    assert "Traceback" not in everything and "failed in hook" not in everything


def test_fit_end_without_a_store_says_nothing(capsys, caplog):
    assert main(["train", *cli_sets("sqlite:///mlflow.db", "plugins.disabled=['mlflow', 'progress']")]) == 0
    everything = capsys.readouterr().err + caplog.text
    assert "analytics" not in everything and "Traceback" not in everything
    assert not Path("mlflow.db").exists()


def test_plot_out_that_cannot_be_written(sqlite_uri, tmp_path, capsys):
    populate(sqlite_uri, experiment="segtrack")
    Path("plots").mkdir()
    Path("blocker").write_text("a file, not a folder")
    cases = {
        "plots": "--out plots is a folder: name the image file, e.g. --out plots/learning-curves.png",
        "curves.jpg": "--out curves.jpg names no supported image type: end it in .png, .svg, .pdf",
        "curves": "--out curves names no supported image type",
        "blocker/curves.png": "cannot write --out blocker/curves.png (",
    }
    for out, message in cases.items():
        before = {k: v for k, v in _files(tmp_path).items() if not k.startswith(".segtrack")}
        assert main(["runs", "plot", "--metric", "val_dice", "--out", out, "--tracking-uri", sqlite_uri]) == 2
        _one_error(capsys, message)
        assert {k: v for k, v in _files(tmp_path).items() if not k.startswith(".segtrack")} == before, out
    assert main(["runs", "plot", "--metric", "val_dice", "--out", "plots/dice.svg", "--tracking-uri", sqlite_uri]) == 0
    assert Path("plots/dice.svg").read_text().startswith("<?xml") and os.listdir("plots") == ["dice.svg"]


def test_no_runs_in_the_experiment_lists_the_experiments_that_have_runs(sqlite_uri, capsys):
    assert main(["runs", "list", "--tracking-uri", sqlite_uri]) == 2
    _one_error(capsys, f"no runs at {sqlite_uri} yet: train first")
    populate(sqlite_uri, experiment="other", runs=2)
    populate(sqlite_uri, experiment="third", runs=1, parent=False)
    assert main(["runs", "top", "--metric", "val_dice", "--tracking-uri", sqlite_uri]) == 2
    _one_error(
        capsys,
        f"no runs in experiment 'segtrack' at {sqlite_uri}, which has 'other' (3 runs), 'third' (1 run): "
        f"choose one with --experiment NAME (or --experiment all)",
    )
    assert main(["runs", "list", "--experiment", "other", "--tracking-uri", sqlite_uri]) == 0
    assert "(3 rows)" in capsys.readouterr().out


def test_a_cache_folder_that_cannot_be_written_costs_a_warning(sqlite_uri, capsys, caplog):
    populate(sqlite_uri, experiment="segtrack", runs=2)
    Path("blocker").write_text("a file, not a folder")
    assert main(["runs", "list", "--tracking-uri", sqlite_uri, "--set", "analytics.cache_dir='blocker/cache'"]) == 0
    assert "(3 rows)" in capsys.readouterr().out
    (line,) = [m for m in caplog.messages if m.startswith("analytics:")]
    assert line.startswith("analytics: cannot write the cache in blocker/cache (") and line.endswith(
        "set analytics.cache_dir to a writable folder"
    )
