"""The bounded YAML loader: what safe_load accepts and a reader then chokes on is refused with the line."""

from __future__ import annotations

import time

import pytest
import yaml

from vestis.data.textio import decode_utf8
from vestis.data.yaml_safe import MAX_NODES, BoundedLoader, load_yaml, read_yaml
from vestis.errors import VestisError


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: ``width ** levels`` strings from a few hundred bytes."""
    text = "a0: &a0 [" + ", ".join(['"lol"'] * width) + "]\n"
    for i in range(1, levels):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]\n"
    return text


def _refused(text: str) -> str:
    with pytest.raises(VestisError) as e:
        load_yaml(text, "T", "taxonomy")
    return str(e.value)


def test_plain_documents_load_as_safe_load_does():
    text = "name: x\nattributes:\n  - {name: colour, values: [red, 'no', 3, 1.5]}\nbase: &b {k: 1}\nd: {<<: *b, j: 2}\n"
    data, node = load_yaml(text, "T", "taxonomy")
    assert data == yaml.safe_load(text)
    assert node is not None and node.value[1][0].start_mark.line == 1
    assert load_yaml("", "T", "taxonomy") == (None, None)


def test_billion_laughs_is_refused_quickly():
    text = billion_laughs()
    assert len(text) < 2000
    # safe_load itself returns fast (the strings are shared); walking the result is what never ends
    assert len(yaml.safe_load(text)["a8"]) == 9
    start = time.perf_counter()
    msg = _refused(text)
    assert time.perf_counter() - start < 0.5
    # a5 (line 6) stands for 9**6 strings, the first anchor over the bound
    assert msg == f"T:6: taxonomy: aliases expand to more than {MAX_NODES:,} nodes (an alias bomb?)"


def test_aliases_below_the_bound_are_kept():
    # 9**4 = 6561 strings: expanded, well under the bound
    data, _ = load_yaml(billion_laughs(levels=4), "T", "taxonomy")
    assert len(data["a3"]) == 9 and data["a3"][0][0][0] == ["lol"] * 9


def test_expansion_bound_counts_every_expanded_node():
    class Small(BoundedLoader):
        max_nodes = 10

    # [a, a, a] with a = [x, y]: 1 outer + 3 * (1 + 2) = 10 nodes
    text = "- &a [x, y]\n- *a\n- *a\n"
    loader = Small(text)
    assert loader.construct_document(loader.get_single_node()) == [["x", "y"]] * 3
    loader = Small(text + "- *a\n")
    with pytest.raises(yaml.YAMLError, match="more than 10 nodes"):
        loader.get_single_node()


@pytest.mark.parametrize(
    ("text", "line"),
    [("a: &a [1, *a]\n", 1), ("x: 1\na: &a\n  b: *a\n", 3), ("a: &a [[[*a]]]\n", 1)],
)
def test_self_referencing_alias(text, line):
    assert _refused(text) == f"T:{line}: taxonomy: an alias refers to a node that contains it"


def test_deep_nesting_is_refused_before_recursion_runs_out():
    start = time.perf_counter()
    assert _refused("x: " + "[" * 20_000 + "]" * 20_000) == "T:1: taxonomy: nesting deeper than 64 levels"
    assert time.perf_counter() - start < 0.5
    block = "".join("  " * i + f"k{i}:\n" for i in range(100))
    assert _refused(block) == "T:64: taxonomy: nesting deeper than 64 levels"
    # 64 levels are fine
    assert load_yaml("[" * 64 + "]" * 64, "T", "x")[0] is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: a\nattributes: []\nname: b\n", "T:3: taxonomy: duplicate key 'name' (first on line 1)"),
        ("a: {b: 1, b: 2}\n", "T:1: taxonomy: duplicate key 'b' (first on line 1)"),
        ("a:\n  - x: 1\n    y: 2\n    x: 3\n", "T:4: taxonomy: duplicate key 'x' (first on line 2)"),
        ("1: a\n0x1: b\n", "T:2: taxonomy: duplicate key 1 (first on line 1)"),
    ],
)
def test_duplicate_keys(text, message):
    assert yaml.safe_load(text) is not None  # accepted silently by safe_load, the last one winning
    assert _refused(text).startswith(message + "; expected each key once")


def test_merge_keys_are_not_duplicates():
    data, _ = load_yaml("b: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n", "T", "t")
    assert data["d"] == {"x": 3, "y": 2}


def test_huge_integer():
    with pytest.raises(ValueError, match="integer string conversion"):
        yaml.safe_load("id: " + "7" * 5000)
    msg = _refused("a: 1\nid: " + "7" * 5000 + "\n")
    assert msg.startswith("T:2: taxonomy: an integer of 5,000 digits; expected at most 4,300")
    assert load_yaml("id: '" + "7" * 5000 + "'", "T", "t")[0]["id"] == "7" * 5000


def test_syntax_error_has_the_line():
    assert _refused("a: [1, 2\nb: 3\n") == "T:2: taxonomy: not valid YAML (expected ',' or ']', but got ':')"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("naïve: é\n".encode("latin-1"), "F:1: not UTF-8: byte 0xef at column 3 (Latin-1 or Windows-1252?)"),
        (b"a: 1\nb: caf\xe9\n", "F:2: not UTF-8: byte 0xe9 at column 7"),
        (b"a: 1\r\nb: \xff\r\n", "F:2: not UTF-8: byte 0xff at column 4"),
        ("a: 1\n".encode("utf-16"), "F:1: not UTF-8: UTF-16 text (byte-order mark ff fe)"),
        ("a: 1\n".encode("utf-16-be"), "F:1: not UTF-8: NUL bytes (UTF-16 text without a byte-order mark?)"),
        (b"a: 1\n" + "b: 2\n".encode("utf-16-le"), "F:2: not UTF-8: a NUL byte at column 2 (binary data?)"),
        ("a: 1\n".encode("utf-32"), "F:1: not UTF-8: UTF-32 text"),
        (b"a: 1\nb: \x00\n", "F:2: not UTF-8: a NUL byte at column 4 (binary data?)"),
    ],
)
def test_not_utf8(data, message):
    with pytest.raises(VestisError) as e:
        decode_utf8(data, "F")
    assert str(e.value).startswith(message)
    assert str(e.value).endswith("expected UTF-8 text (save the file as UTF-8)")


def test_utf8_with_bom_and_read_yaml(tmp_path):
    assert decode_utf8("\ufeffa: é\n".encode(), "F") == "a: é\n"
    path = tmp_path / "c.yaml"
    path.write_bytes("a: é\n".encode("cp1252"))
    with pytest.raises(VestisError, match=r"c\.yaml:1: not UTF-8: byte 0xe9 at column 4"):
        read_yaml(path, "config")
    with pytest.raises(VestisError, match=r"nope\.yaml: cannot read config: No such file"):
        read_yaml(tmp_path / "nope.yaml", "config")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: !!int\n", "T:1: taxonomy: expected a valid tag:yaml.org,2002:int value, got '' (IndexError)"),
        ("a: 1\nb: !!float x\n", "T:2: taxonomy: expected a valid tag:yaml.org,2002:float value, got 'x' (ValueError)"),
        ("a: 1\nb: c\x01d\n", "T:2: taxonomy: not valid YAML (character #x0001 is not allowed)"),
    ],
)
def test_values_that_do_not_fit_their_tag_and_control_characters(text, message):
    with pytest.raises((IndexError, ValueError, yaml.YAMLError)) as e:  # a traceback from safe_load
        yaml.safe_load(text)
    assert not isinstance(e.value, VestisError)
    assert _refused(text) == message
