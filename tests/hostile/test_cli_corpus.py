"""Every hostile input of the corpus through every command it concerns: a clean outcome, never a traceback.

An ``error`` is exit 1 with an ``error:`` line naming the file (and the line where the input has one); a
listing of catalog problems may follow it, nothing else may. ``problems`` is ``vestis validate`` exiting 1
with each expected line listed as ``file:line: ...``. ``ok`` is exit 0. Each run has a time bound, so a hang
(an alias bomb walked, a quote scanned for ever) fails instead of stalling the suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.make_corpus import CASES, OK, Case, build, run_case

PARAMS = [
    pytest.param(
        case,
        command,
        id=f"{case.name}-{command}",
        marks=[
            *([pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []),
            *([pytest.mark.slow] if command in case.slow else []),
        ],
    )
    for case in CASES
    for command in case.expect
]
_built: dict[str, object] = {}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def _build_once(case: Case, root: Path):
    # the commands of one case share its files (a predict case's checkpoint is made once)
    if case.name not in _built:
        _built[case.name] = build(case, root / case.name)
    return _built[case.name]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("case", "command"), PARAMS)
def test_hostile_input(case: Case, command: str, corpus_dir: Path) -> None:
    b = _build_once(case, corpus_dir)
    expected = case.expect[command]
    r = run_case(b, case, command, timeout=None)  # pytest-timeout bounds the run
    assert not r.traceback, r.stdout + r.stderr
    assert r.verdict(expected) == "clean", f"exit {r.exit_code}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    where = case.where_for(command)
    if expected == "error":
        lines = r.stderr.strip().splitlines()
        assert lines and lines[0].startswith("error: "), r.stderr
        # the message names the file (and line): the case folder plus the hostile file's name
        assert f"{b.root}/{where}" in lines[0] if where else str(b.root) in lines[0], lines[0]
        if len(lines) > 1:  # only a listing of catalog problems may follow, each naming its file and line
            assert lines[0].endswith(":"), r.stderr
            listed = [line for line in lines[1:] if line.startswith("  ") and not line.startswith("  ...")]
            assert listed and all(line.startswith(f"  {b.root}/") for line in listed), r.stderr
    elif expected == "problems":
        listed = {line.split(": ", 1)[0] for line in r.stdout.splitlines() if line.startswith(f"{b.root}/{where}:")}
        assert listed >= {f"{b.root}/{where}:{n}" for n in case.lines}, r.stdout
    else:
        assert expected == OK
    if case.check is not None:
        case.check(b, command)


def test_the_table_covers_every_command_and_kind():
    covered = {c for case in CASES for c in case.expect}
    assert covered == {"validate", "stats", "train", "import", "predict"}
    assert len({case.name for case in CASES}) == len(CASES)


def test_os_error_messages_name_the_target():
    import errno

    from vestis.cli._app import _os_error_message

    # os.replace(tmp, out) fails with the temporary file as filename and the user's --out as filename2
    e = OSError(errno.EISDIR, "Is a directory", "/o/.tags.jsonl.x.tmp", None, "/o/tags.jsonl")
    assert _os_error_message(e) == "/o/tags.jsonl: Is a directory (expected a file, not a folder)"
    e = OSError(errno.EIO, "Input/output error", "/o/a")
    assert _os_error_message(e) == "/o/a: Input/output error"


def test_os_error_without_a_path_is_not_hidden(monkeypatch):
    from typer.testing import CliRunner

    import vestis.cli

    def broken(*args, **kwargs):
        raise OSError("no path in this one")

    monkeypatch.setattr(vestis.cli.validate, "load_catalog", broken)
    res = CliRunner().invoke(vestis.cli.app, ["validate", "m.csv"])
    assert isinstance(res.exception, OSError)  # a bug, not a user's path: it keeps its traceback
