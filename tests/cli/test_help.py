"""Every command documents every parameter: help text, a visible default, and flags without a value placeholder."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

import vestis.cli

runner = CliRunner()


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if hasattr(cmd, "commands"):  # a group: the root app, `vestis config`
        yield path, cmd
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, cmd


COMMANDS = list(_commands(get_command(vestis.cli.app)))


def test_the_walk_sees_every_command():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"", "train", "predict", "serve", "index", "evaluate", "export", "config", "config show"} <= names
    assert len(names) >= 15


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) or "vestis" for p, _ in COMMANDS])
def test_every_parameter_has_help_and_shows_its_default(path, cmd):
    assert (cmd.help or "").strip(), f"{path}: no command help"
    for p in cmd.params:
        where = f"vestis {' '.join(path)} {p.opts[0]}"
        help_text = (getattr(p, "help", None) or "").strip()
        assert help_text, f"{where}: no help"
        if p.param_type_name != "option" or p.required or p.is_flag:
            continue  # arguments and required options have no default to show; a flag's is its off/on pair
        if p.default in (None, [], ()):
            # nothing Typer could print: the help itself must say what happens without it
            assert "default" in help_text.lower() or "preset" in help_text.lower(), f"{where}: default not said"
        else:
            assert p.show_default is not False, f"{where}: default hidden"


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) or "vestis" for p, _ in COMMANDS])
def test_help_renders_defaults_and_no_bool_placeholder(path, cmd):
    res = runner.invoke(vestis.cli.app, [*path, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output and "BOOLEAN" not in res.output
    for p in cmd.params:
        if p.param_type_name == "option" and not p.is_flag and p.default not in (None, [], ()):
            shown = p.default if not isinstance(p.default, float) else f"{p.default:g}"
            assert f"[default: {shown}" in res.output or f"[default: {p.default}" in res.output, (path, p.name)
