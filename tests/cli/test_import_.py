import json
import os
from pathlib import Path

from typer.testing import CliRunner

import vestis.cli
from tests.conftest import write_image


def test_import_command_writes_the_catalog_and_prints_the_summary(tmp_path):
    src = tmp_path / "shop"
    for rel in ("colour/red/a.jpg", "colour/red/b.jpg", "colour/blue/c.jpg", "colour/blue/e.jpg", "colour/green/d.jpg"):
        write_image(src / rel, size=(8, 8))
    out = tmp_path / "catalog"
    result = CliRunner().invoke(
        vestis.cli.app, ["import", "folders", str(src), "--out", str(out), "--min-count", "2", "--rare", "drop"]
    )
    assert result.exit_code == 0, result.output
    assert "rows read: 5\nrows written: 5\nrows skipped: 0\n" in result.output
    assert "colour: rare value (< 2 examples) dropped: 1" in result.output
    assert (out / "manifest.csv").read_text().splitlines() == [
        "id,image,group,split,title,colour",
        "c,../shop/colour/blue/c.jpg,,,,blue",
        "e,../shop/colour/blue/e.jpg,,,,blue",
        "d,../shop/colour/green/d.jpg,,,,",
        "a,../shop/colour/red/a.jpg,,,,red",
        "b,../shop/colour/red/b.jpg,,,,red",
    ]
    assert json.loads((out / "import_report.json").read_text())["folded"] == {"colour": {"green": 1}}


def test_import_command_errors_exit_1(tmp_path):
    runner = CliRunner()
    result = runner.invoke(vestis.cli.app, ["import", "nope", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "unknown import format 'nope'" in result.output
    result = runner.invoke(vestis.cli.app, ["import", "folders", str(tmp_path), "--out", str(tmp_path / "o"), "--crop"])
    assert result.exit_code == 1
    assert "--crop is not supported" in result.output
    # one value with one example: nothing is left to learn, and nothing is written
    write_image(tmp_path / "src" / "colour" / "red" / "a.jpg", size=(8, 8))
    result = runner.invoke(vestis.cli.app, ["import", "folders", str(tmp_path / "src"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        vestis.cli.app,
        [
            "import",
            "folders",
            str(tmp_path / "src"),
            "--out",
            str(tmp_path / "o2"),
            "--min-count",
            "2",
            "--rare",
            "drop",
        ],
    )
    assert result.exit_code == 1
    assert "no attribute left for the taxonomy (colour: no value left)" in result.output
    assert not (tmp_path / "o2").exists()


def test_import_folders_copy_skips_a_symlink_to_etc_passwd_unless_follow_symlinks(tmp_path):
    src = tmp_path / "shop"
    for rel in ("colour/red/a.jpg", "colour/blue/b.jpg"):
        write_image(src / rel, size=(8, 8))
    os.symlink("/etc/passwd", src / "colour" / "red" / "passwd.jpg")
    out = tmp_path / "catalog"
    runner = CliRunner()
    result = runner.invoke(vestis.cli.app, ["import", "folders", str(src), "--out", str(out), "--copy"])
    assert result.exit_code == 0, result.output
    assert "rows read: 3\nrows written: 2\nrows skipped: 1\n" in result.output
    assert "outside the source: 1 (e.g. colour/red/passwd.jpg: 'shop/colour/red/passwd.jpg' lies outside" in (
        result.output.replace(str(tmp_path) + "/", "")
    )
    assert sorted(p.name for p in (out / "images").rglob("*.jpg")) == ["a.jpg", "b.jpg"]
    result = runner.invoke(
        vestis.cli.app, ["import", "folders", str(src), "--out", str(tmp_path / "c2"), "--copy", "--follow-symlinks"]
    )
    assert result.exit_code == 0, result.output
    assert "rows written: 3\n" in result.output
    copied = tmp_path / "c2" / "images" / "colour" / "red" / "passwd.jpg"
    assert copied.read_bytes() == Path("/etc/passwd").read_bytes() and not copied.is_symlink()
