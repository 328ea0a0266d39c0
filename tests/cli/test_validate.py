"""`vestis validate` in-process: problems as file:line: field: message, a summary per kind, exit codes."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

import vestis.cli
from tests.conftest import write_image
from vestis.data.taxonomy import Taxonomy, save_taxonomy

TAX = Taxonomy.from_dict(
    {
        "attributes": [
            {"name": "category", "values": ["shirt", "trousers"]},
            {"name": "colour", "values": ["red", "blue"]},
            {"name": "closure", "values": ["buttons", "zip"], "applies_to": ["trousers"]},
        ]
    }
)
runner = CliRunner()


def _catalog(tmp_path: Path, rows: list[str]) -> Path:
    save_taxonomy(TAX, tmp_path / "taxonomy.yaml")
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / name)
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(["id,image,split,category,colour,closure", *rows]) + "\n", encoding="utf-8")
    return path


def test_valid(tmp_path):
    path = _catalog(tmp_path, ["a,a.jpg,train,shirt,red,", "b,b.jpg,test,trousers,blue,zip"])
    res = runner.invoke(vestis.cli.app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    assert f"OK: 2 rows ({path}, images checked)" in res.stdout


def test_problems(tmp_path):
    path = _catalog(
        tmp_path,
        [
            "a,a.jpg,train,shirt,red,",
            "b,b.jpg,train,shirt,teal,zip",
            "a,missing.jpg,train,trousers,blue|red,",
        ],
    )
    res = runner.invoke(vestis.cli.app, ["validate", str(path)])
    assert res.exit_code == 1
    out = res.stdout
    # the list inside the message survives the console (no markup is interpreted)
    assert "manifest.csv:3: colour: unknown value 'teal'; expected one of ['red', 'blue']\n" in out
    assert "manifest.csv:3: closure: value given, but the attribute does not apply to category 'shirt'" in out
    assert "manifest.csv:2: id: duplicate id 'a' (also on line 4)" in out
    assert "manifest.csv:4: id: duplicate id 'a' (also on line 2)" in out
    assert "manifest.csv:4: colour: several values ['blue', 'red'] in a single-label attribute" in out
    assert "manifest.csv:4: image: image file" in out
    assert f"6 problem(s) on 3 line(s) of {path}:" in out
    summary = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert summary == [
        ["unknown-value", "1"],
        ["multiple-values", "1"],
        ["not-applicable", "1"],
        ["duplicate-id", "2"],
        ["missing-image", "1"],
    ]
    assert "OK:" not in out


def test_no_images_and_max_pixels(tmp_path):
    path = _catalog(tmp_path, ["a,a.jpg,train,shirt,red,", "b,gone.jpg,train,shirt,red,"])
    res = runner.invoke(vestis.cli.app, ["validate", str(path), "--no-images"])
    assert res.exit_code == 0, res.output
    assert "OK: 2 rows" in res.stdout
    Image.new("1", (300, 200)).save(tmp_path / "big.png")
    path = _catalog(tmp_path, ["a,big.png,train,shirt,red,"])
    res = runner.invoke(vestis.cli.app, ["validate", str(path), "--max-pixels", "50000"])
    assert res.exit_code == 1
    assert "manifest.csv:2: image: image is 300x200 = 60,000 pixels, over the cap of 50,000" in res.stdout
    res = runner.invoke(vestis.cli.app, ["validate", str(path), "--max-pixels", "60000"])
    assert res.exit_code == 0, res.output


def test_explicit_taxonomy_and_errors(tmp_path):
    path = _catalog(tmp_path, ["a,a.jpg,train,shirt,red,"])
    other = tmp_path / "other"
    other.mkdir()
    moved = other / "manifest.csv"
    moved.write_text(path.read_text(encoding="utf-8").replace("a.jpg", "../a.jpg"), encoding="utf-8")
    res = runner.invoke(vestis.cli.app, ["validate", str(moved)])
    assert res.exit_code == 1
    assert "error:" in res.stderr and "no taxonomy given" in res.stderr
    res = runner.invoke(vestis.cli.app, ["validate", str(moved), "--taxonomy", str(tmp_path / "taxonomy.yaml")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(vestis.cli.app, ["validate", str(tmp_path / "nope.csv")])
    assert res.exit_code == 1
    assert "manifest not found" in res.stderr


def test_root_reports_images_outside_it(tmp_path):
    cat = tmp_path / "cat"
    cat.mkdir()
    write_image(tmp_path / "outside.jpg")
    path = _catalog(cat, ["a,a.jpg,train,shirt,red,", "b,../outside.jpg,train,shirt,red,", "c,/etc/passwd,,shirt,,"])
    res = runner.invoke(vestis.cli.app, ["validate", str(path), "--root", str(cat)])
    assert res.exit_code == 1, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == (
        f"{path}:3: image: '{cat / '../outside.jpg'}' lies outside '{cat}'; expected an image inside --root"
    )
    assert lines[1].startswith(f"{path}:4: image: '/etc/passwd' lies outside '{cat}'")
    assert "  outside-root  2" in res.stdout
    res = runner.invoke(vestis.cli.app, ["validate", str(path), "--root", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "root: expected an existing folder" in res.output
    res = runner.invoke(vestis.cli.app, ["validate", str(path), "--root", "/"])
    assert res.exit_code == 1 and "outside-root" not in res.output  # /etc/passwd opened: a bad image
