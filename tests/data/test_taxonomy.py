"""Taxonomy loading: every validation error names the file, the line and the field; save/load round trips."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from vestis.data.taxonomy import Attribute, Taxonomy, load_taxonomy, save_taxonomy
from vestis.errors import VestisError

VALID = """\
name: demo
category_attribute: category
hierarchy:
  upper body: [shirt]
  lower body: [trousers, skirt]
attributes:
  - name: category
    kind: single
    values: [shirt, trousers, skirt]
  - name: closure
    kind: single
    values: [buttons, zip, none]
    applies_to: [trousers, skirt]
    roi: small
    description: how the garment closes
  - name: occasion
    kind: multi
    values: [casual, party, work]
    roi: large
metadata: [year]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "taxonomy.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _errors(tmp_path: Path, text: str) -> list[str]:
    """The problem lines of the error raised for ``text``, with the file path replaced by ``T``."""
    path = _write(tmp_path, text)
    with pytest.raises(VestisError) as exc:
        load_taxonomy(path)
    msg = str(exc.value).replace(str(path), "T")
    return [line.strip() for line in msg.splitlines() if line.strip().startswith("T:")]


def test_valid_taxonomy(tmp_path):
    t = load_taxonomy(_write(tmp_path, VALID))
    assert t.name == "demo"
    assert t.names == ["category", "closure", "occasion"]
    assert t.categories == ("shirt", "trousers", "skirt")
    assert t["closure"].applies_to == ("trousers", "skirt")
    assert t["closure"].roi == "small"
    assert t["occasion"].kind == "multi"
    assert t["closure"].applies("trousers") and not t["closure"].applies("shirt")
    assert t["closure"].applies(None)  # unknown category: the attribute may apply
    assert t.object_type("skirt") == "lower body"
    assert t.metadata == ("year",)
    assert t["occasion"].index("work") == 2


def test_round_trip(tmp_path):
    t = load_taxonomy(_write(tmp_path, VALID))
    out = save_taxonomy(t, tmp_path / "copy" / "tax.yaml")
    again = load_taxonomy(out)
    assert again == t
    assert again.to_dict() == t.to_dict()


def test_round_trip_from_dict_with_unicode(tmp_path):
    t = Taxonomy.from_dict(
        {
            "category_attribute": "catégorie",
            "attributes": [
                {"name": "catégorie", "values": ["robe", "jupe"]},
                {"name": "couleur", "kind": "multi", "values": ["rouge", "bleu ciel", "vert"]},
            ],
        }
    )
    again = load_taxonomy(save_taxonomy(t, tmp_path / "t.yaml"))
    assert again == t
    assert again["couleur"].values == ("rouge", "bleu ciel", "vert")


def test_category_attribute_defaults_to_category(tmp_path):
    t = load_taxonomy(_write(tmp_path, "attributes:\n  - name: category\n    values: [a, b]\n"))
    assert t.category_attribute == "category"


def test_duplicate_value(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        attributes:
          - name: colour
            values:
              - red
              - blue
              - red
        """,
    )
    assert errs == ["T:6: attributes[0].values[2]: duplicate value 'red' in attribute 'colour'"]


def test_duplicate_attribute(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        attributes:
          - name: colour
            values: [red, blue]
          - name: colour
            values: [green, black]
        """,
    )
    assert errs == ["T:4: attributes[1].name: duplicate attribute 'colour'"]


def test_unknown_category_in_applies_to(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        attributes:
          - name: category
            values: [shirt, trousers]
          - name: closure
            values: [buttons, zip]
            applies_to: [trousers, skirt]
        """,
    )
    assert errs == ["T:6: attributes[1].applies_to: unknown category 'skirt'; expected one of ['shirt', 'trousers']"]


def test_unknown_category_in_hierarchy(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        hierarchy:
          upper: [shirt]
          lower: [trousers, gown]
        attributes:
          - name: category
            values: [shirt, trousers]
        """,
    )
    assert errs == ["T:3: hierarchy.lower: unknown category 'gown'; expected one of ['shirt', 'trousers']"]


def test_category_in_two_hierarchy_branches(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        hierarchy:
          upper: [shirt]
          lower: [shirt]
        attributes:
          - name: category
            values: [shirt, trousers]
        """,
    )
    assert errs == ["T:3: hierarchy.lower: category 'shirt' is already under 'upper'"]


def test_empty_attribute(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        attributes:
          - name: colour
            values: [red, blue]
          - name: fabric
            values: []
        """,
    )
    assert errs == ["T:5: attributes[1].values: attribute 'fabric' is empty: expected a non-empty list of values"]


def test_no_attributes(tmp_path):
    errs = _errors(tmp_path, "name: x\nattributes: []\n")
    assert errs == ["T:2: attributes: expected a non-empty list of attributes"]


def test_bad_kind(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        attributes:
          - name: colour
            kind: several
            values: [red, blue]
        """,
    )
    assert errs == ["T:3: attributes[0].kind: expected one of ['single', 'multi'], got 'several'"]


def test_bad_roi(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        attributes:
          - name: colour
            values: [red, blue]
            roi: medium
        """,
    )
    assert errs == ["T:4: attributes[0].roi: expected one of ['small', 'large'], got 'medium'"]


def test_unknown_keys(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        name: demo
        attributes:
          - name: colour
            values: [red, blue]
            colours: [green]
        categories: [a]
        """,
    )
    assert errs == [
        "T:6: categories: unknown key; expected one of "
        "['attributes', 'category_attribute', 'hierarchy', 'metadata', 'name']",
        "T:5: attributes[0].colours: unknown key; expected name, kind, values, applies_to, roi or description",
    ]


def test_invalid_yaml(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        attributes:
          - name: colour
            values: [red, blue
          - name: fabric
        """,
    )
    assert len(errs) == 1
    assert re.fullmatch(r"T:4: taxonomy: not valid YAML \(.+\)", errs[0]), errs


def test_not_a_mapping(tmp_path):
    errs = _errors(tmp_path, "- a\n- b\n")
    assert errs == ["T:1: taxonomy: expected a mapping with an 'attributes' list"]


def test_value_that_is_not_a_string(tmp_path):
    # YAML 1.1 reads an unquoted `no` as false: the message names the type so the user can quote it
    errs = _errors(
        tmp_path,
        """\
        attributes:
          - name: hood
            values:
              - yes_hood
              - no
        """,
    )
    assert errs == [
        "T:5: attributes[0].values[1]: expected a string, got bool"
        " (YAML reads unquoted yes/no/on/off as booleans: quote the value)"
    ]


def test_bad_values_and_reserved_names(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        attributes:
          - name: split
            values: ["a|b", " c", d]
          - name: single
            values: [only]
        """,
    )
    assert errs == [
        "T:2: attributes[0].name: 'split' is a reserved manifest column; choose another name",
        "T:3: attributes[0].values[0]: value 'a|b' must be non-empty, without surrounding spaces or '|'",
        "T:3: attributes[0].values[1]: value ' c' must be non-empty, without surrounding spaces or '|'",
        "T:5: attributes[1].values: single-label attribute 'single' needs at least two values",
    ]


def test_category_attribute_problems(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        category_attribute: type
        attributes:
          - name: colour
            values: [red, blue]
        """,
    )
    assert errs == ["T:1: category_attribute: 'type' is not an attribute of the taxonomy"]
    errs = _errors(
        tmp_path,
        """\
        category_attribute: category
        attributes:
          - name: category
            kind: multi
            values: [shirt, dress]
        """,
    )
    assert errs == ["T:1: category_attribute: 'category' must be single-label"]


def test_every_problem_is_reported_at_once(tmp_path):
    errs = _errors(
        tmp_path,
        """\
        attributes:
          - name: colour
            kind: several
            values: [red, blue]
          - name: fabric
            values: []
            roi: tiny
        """,
    )
    assert [e.split(": ")[0] for e in errs] == ["T:3", "T:6", "T:7"]


def test_missing_file(tmp_path):
    with pytest.raises(VestisError, match=r"nope\.yaml: cannot read taxonomy"):
        load_taxonomy(tmp_path / "nope.yaml")


def test_attribute_index_unknown_value():
    a = Attribute("colour", "single", ("red", "blue"))
    assert a.index("blue") == 1
    with pytest.raises(VestisError, match=r"colour: unknown value 'green'; expected one of \['red', 'blue'\]"):
        a.index("green")


def test_duplicate_keys_are_reported(tmp_path):
    path = _write(tmp_path, VALID.replace("    roi: large\n", "    roi: large\n    kind: single\n"))
    with pytest.raises(VestisError) as e:
        load_taxonomy(path)
    assert str(e.value).startswith(f"{path}:20: taxonomy: duplicate key 'kind' (first on line 17)")


def test_alias_bomb_and_self_reference(tmp_path):
    from tests.data.test_yaml_safe import billion_laughs

    path = _write(tmp_path, billion_laughs() + "attributes: [{name: c, values: *a8}]\n")
    with pytest.raises(VestisError, match=r"taxonomy\.yaml:6: taxonomy: aliases expand to more than"):
        load_taxonomy(path)
    path = _write(tmp_path, "attributes: &a\n  - name: c\n    values: *a\n")
    with pytest.raises(VestisError, match=r"taxonomy\.yaml:3: taxonomy: an alias refers to a node that contains it"):
        load_taxonomy(path)


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_not_utf8_taxonomy(tmp_path, encoding):
    path = tmp_path / "taxonomy.yaml"
    path.write_bytes(VALID.replace("demo", "démo").encode(encoding))
    with pytest.raises(VestisError, match=r"taxonomy\.yaml:1: not UTF-8: "):
        load_taxonomy(path)
