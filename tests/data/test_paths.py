"""Confinement rules for paths named by data files."""

import os

import pytest

from tests.conftest import write_image
from vestis.data.paths import UnsafePath, confine, is_within, name_problem, relative_problem


@pytest.mark.parametrize("name", ["a", "12345", "a.jpg", "shirt blue", ".hidden", "a..b"])
def test_plain_names(name):
    assert name_problem(name) is None


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../../secret/s", "/etc/passwd", "a\\b", "C:x", "a\0b"])
def test_names_that_are_not_plain(name):
    assert name_problem(name) is not None


@pytest.mark.parametrize("path", ["a.jpg", "img/a/b.jpg", "./a.jpg", "a//b.jpg", "x..y/z.jpg"])
def test_relative_paths(path):
    assert relative_problem(path) is None


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/etc/passwd", "absolute"),
        ("C:/Windows/x.jpg", "absolute"),
        ("C:x.jpg", "absolute"),
        ("\\\\server\\share\\x.jpg", "absolute"),
        ("../x.jpg", "'..'"),
        ("img/../../x.jpg", "'..'"),
        ("img\\..\\x.jpg", "'/' or '\\'"),
        ("", "empty"),
        ("./", "to a file"),
    ],
)
def test_relative_paths_refused(path, why):
    assert why in relative_problem(path)


def test_is_within_compares_whole_components():
    assert is_within("/data/cat/a.jpg", "/data/cat") and is_within("/data/cat", "/data/cat")
    assert not is_within("/data/catalog/a.jpg", "/data/cat")  # a common prefix is not containment
    assert is_within("/x", "/")


def test_confine_resolves_symlinks_and_checks_the_file_kind(tmp_path):
    root = tmp_path / "root"
    write_image(root / "a.jpg")
    write_image(tmp_path / "out.jpg")
    os.symlink(tmp_path / "out.jpg", root / "link.jpg")
    os.symlink(root / "a.jpg", root / "inner.jpg")
    os.symlink(root, tmp_path / "alias")
    (root / "dir.jpg").mkdir()
    assert confine(root / "a.jpg", root) == root / "a.jpg"
    assert confine(root / "inner.jpg", root) == root / "a.jpg"
    assert confine(tmp_path / "alias" / "a.jpg", tmp_path / "alias") == root / "a.jpg"
    assert confine(root / "missing.jpg", root) == root / "missing.jpg"  # existence is the caller's question
    with pytest.raises(UnsafePath, match="resolves to") as exc:
        confine(root / "link.jpg", root)
    assert exc.value.kind == "outside"
    assert confine(root / "link.jpg", root, follow_symlinks=True) == tmp_path / "out.jpg"
    with pytest.raises(UnsafePath) as exc:
        confine(root / "dir.jpg", root)
    assert exc.value.kind == "not-a-file"
    assert confine(root / "dir.jpg", root, regular=False) == root / "dir.jpg"
    with pytest.raises(UnsafePath):
        confine(root / ".." / "out.jpg", root)
    with pytest.raises(UnsafePath, match="not a usable path") as exc:
        confine(str(root / "a\0.jpg"), root)
    assert exc.value.kind == "not-a-file"
