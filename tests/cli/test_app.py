"""The CLI as a whole: the command list, the one error path, --debug."""

import pytest
from typer.testing import CliRunner

import vestis.cli
from vestis.cli._app import main

EXPECTED = {"synth", "validate", "stats", "import", "train", "evaluate", "models", "serve", "export", "predict"}


def test_help_lists_the_commands():
    res = CliRunner().invoke(vestis.cli.app, ["--help"])
    assert res.exit_code == 0
    listed = {line.split()[1] for line in res.output.splitlines() if line.startswith("│ ") and len(line.split()) > 1}
    assert listed >= EXPECTED, listed


def test_user_error_is_one_line_and_exit_1(tmp_path):
    res = CliRunner().invoke(
        vestis.cli.app, ["validate", str(tmp_path / "nope.csv"), "--taxonomy", str(tmp_path / "t.yaml")]
    )
    assert res.exit_code == 1
    assert "error:" in res.output and "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_debug_shows_the_exception(tmp_path):
    res = CliRunner().invoke(
        vestis.cli.app, ["--debug", "validate", str(tmp_path / "nope.csv"), "--taxonomy", str(tmp_path / "t.yaml")]
    )
    assert res.exit_code == 1
    assert type(res.exception).__name__ == "VestisError"


def test_main_entry_point(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "train" in capsys.readouterr().out
