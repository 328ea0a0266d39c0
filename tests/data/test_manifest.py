"""Manifest reading and writing in CSV, JSONL and Parquet; problems are collected with their line."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vestis.data.manifest import (
    RESERVED,
    SPLITS,
    Manifest,
    Problem,
    Record,
    read_manifest,
    split_cell,
    write_manifest,
)
from vestis.errors import VestisError

FORMATS = (".csv", ".jsonl", ".parquet")


def _sample() -> Manifest:
    return Manifest(
        records=[
            Record(
                "1",
                "img/1.jpg",
                {"colour": ("red",), "occasion": ("casual", "party")},
                group="p1",
                split="train",
                title='Red "linen" shirt, slim fit',
                meta={"year": "2012"},
            ),
            Record("2", "img/2.jpg", {"occasion": ("work",)}, split="test", title="Two\nlines"),
            Record("3", "img/3.jpg", {}, group="p1", meta={"year": "2013", "brand": "Ünï"}),
        ],
        attributes=["colour", "occasion"],
        meta_columns=["year", "brand"],
    )


@pytest.mark.parametrize("suffix", FORMATS)
def test_write_read_round_trip(tmp_path, suffix):
    m = _sample()
    path = write_manifest(m, tmp_path / f"manifest{suffix}")
    back = read_manifest(path)
    assert back.records == m.records
    assert back.problems == []
    assert back.root == tmp_path
    assert back.path == path
    assert set(back.attributes) == {"colour", "occasion"}
    assert set(back.meta_columns) == {"year", "brand"}
    # JSONL: line = row; CSV: physical line (row 2's title holds a newline); Parquet: row + 1 (a virtual header)
    assert [r.line for r in back.records] == {".jsonl": [1, 2, 3], ".csv": [2, 3, 5], ".parquet": [2, 3, 4]}[suffix]


def test_csv_layout(tmp_path):
    path = write_manifest(_sample(), tmp_path / "m.csv")
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "id,image,group,split,title,meta_year,meta_brand,colour,occasion"
    assert text.splitlines()[1] == '1,img/1.jpg,p1,train,"Red ""linen"" shirt, slim fit",2012,,red,casual|party'
    # the quoted newline of row 2 spans two physical lines: row 3 starts on line 5
    assert read_manifest(path).records[2].line == 5


def test_jsonl_lists_and_nulls(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [
        {"id": "a", "image": "a.jpg", "occasion": ["casual", " party "], "colour": None},
        {"id": 7, "image": "b.jpg", "occasion": "work | casual", "colour": ""},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    m = read_manifest(path)
    assert m.problems == []
    assert [r.id for r in m.records] == ["a", "7"]  # an integer id is accepted and kept as text
    assert m.records[0].labels == {"occasion": ("casual", "party")}
    assert m.records[1].labels == {"occasion": ("work", "casual")}
    assert m.attributes == ["occasion", "colour"]


def test_empty_cell_is_missing_label(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,image,colour,occasion\na,a.jpg,,casual\nb,b.jpg,red,  \nc,c.jpg, | ,\n", encoding="utf-8")
    m = read_manifest(path)
    assert [r.labels for r in m.records] == [{"occasion": ("casual",)}, {"colour": ("red",)}, {}]
    assert m.problems == []


def test_split_cell():
    assert split_cell("a | b|c ") == ("a", "b", "c")
    assert split_cell("") == ()
    assert split_cell(" | ") == ()


def test_missing_id_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("image,colour\na.jpg,red\n", encoding="utf-8")
    with pytest.raises(VestisError, match=r"m\.csv:1: header: missing required column\(s\) \['id'\]"):
        read_manifest(path)
    jpath = tmp_path / "m.jsonl"
    jpath.write_text('{"id": "a", "colour": "red"}\n', encoding="utf-8")
    with pytest.raises(VestisError, match=r"m\.jsonl:1: header: missing required column\(s\) \['image'\]"):
        read_manifest(jpath)


def test_duplicate_header_and_empty_file(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,image,colour,colour\n", encoding="utf-8")
    with pytest.raises(VestisError, match=r"m\.csv:1: header: duplicate column\(s\) \['colour'\]"):
        read_manifest(path)
    path.write_text("", encoding="utf-8")
    with pytest.raises(VestisError, match=r"m\.csv:1: header: the file is empty"):
        read_manifest(path)


def test_unsupported_format_and_missing_file(tmp_path):
    with pytest.raises(VestisError, match=r"unsupported manifest format '\.tsv'"):
        read_manifest(tmp_path / "m.tsv")
    with pytest.raises(VestisError, match=r"m\.csv: manifest not found"):
        read_manifest(tmp_path / "m.csv")


def test_csv_wrong_field_count(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,image,colour\na,a.jpg,red\nb,b.jpg,red,extra\nc,c.jpg\nd,d.jpg,blue\n", encoding="utf-8")
    m = read_manifest(path)
    assert [r.id for r in m.records] == ["a", "d"]
    assert [str(p).replace(str(path), "M") for p in m.problems] == [
        "M:3: row: expected 3 fields, got 4",
        "M:4: row: expected 3 fields, got 2",
    ]


def test_jsonl_not_an_object(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "image": "a.jpg"}\n[1, 2]\n\n{"id": \n"text"\n', encoding="utf-8")
    m = read_manifest(path)
    assert [r.id for r in m.records] == ["a"]
    got = [(p.line, p.field, p.message) for p in m.problems]
    assert got[0] == (2, "row", "expected a JSON object, got list")
    assert got[1][:2] == (4, "row") and got[1][2].startswith("expected a JSON object (")
    assert got[2] == (5, "row", "expected a JSON object, got str")


def test_non_string_values(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [
        {"id": "a", "image": "a.jpg", "colour": 3},
        {"id": "b", "image": "b.jpg", "title": {"en": "x"}},
        {"id": "c", "image": 12},
        {"id": "d", "image": "d.jpg", "occasion": ["work", 2]},
        {"id": True, "image": "e.jpg"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    m = read_manifest(path)
    first = {}
    for p in m.problems:
        first.setdefault((p.line, p.field), p.message)
    assert list(first) == [(1, "colour"), (2, "title"), (3, "image"), (4, "occasion"), (5, "id")]
    assert first[1, "colour"].endswith("or a list of strings, got 3")
    assert first[2, "title"] == "expected a string, got dict {'en': 'x'}"
    assert first[3, "image"] == "expected a string, got int 12"
    assert first[4, "occasion"].endswith("got ['work', 2]")
    assert first[5, "id"] == "expected a string, got bool True"
    # rows without a usable id or image are left out; the others keep their other fields
    assert [r.id for r in m.records] == ["a", "b", "d"]
    assert m.records[0].labels == {}


def test_parquet_non_string_column(tmp_path):
    path = tmp_path / "m.parquet"
    table = pa.table({"id": ["a", "b"], "image": ["a.jpg", "b.jpg"], "weight": pa.array([1.5, None])})
    pq.write_table(table, path)
    m = read_manifest(path)
    assert [(p.line, p.field) for p in m.problems] == [(2, "weight")]
    assert "got 1.5" in m.problems[0].message
    assert [r.id for r in m.records] == ["a", "b"]


def test_bad_split(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,image,split\na,a.jpg,train\nb,b.jpg,validation\nc,c.jpg,\n", encoding="utf-8")
    m = read_manifest(path)
    assert [r.split for r in m.records] == ["train", None, None]
    assert m.problems == [
        Problem(str(path), 3, "split", "expected one of ['train', 'val', 'test'] or empty, got 'validation'")
    ]


def test_empty_id(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,image\n ,a.jpg\nb,\n", encoding="utf-8")
    m = read_manifest(path)
    assert m.records == []
    assert [(p.line, p.field) for p in m.problems] == [(2, "id"), (3, "image")]


def test_image_path_and_subset(tmp_path):
    m = read_manifest(write_manifest(_sample(), tmp_path / "m.csv"))
    assert m.image_path(m.records[0]) == tmp_path / "img" / "1.jpg"
    sub = m.subset(m.records[1:])
    assert [r.id for r in sub] == ["2", "3"] and sub.attributes == m.attributes and sub.root == m.root
    assert m.records[2].group_key == "p1" and m.records[1].group_key == "2"


def test_csv_carriage_return_round_trip(tmp_path):
    m = Manifest([Record("a", "a.jpg", {"colour": ("red",)}, title="old\rmac line")], attributes=["colour"])
    back = read_manifest(write_manifest(m, tmp_path / "m.csv"))
    assert back.problems == []
    assert back.records == m.records


# --- property-based round trip ----------------------------------------------------------------------------------

# text that survives reading: no surrounding whitespace (cells are stripped), never empty (empty = missing);
_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda s: s == s.strip() and s != ""
)
_label_value = _text.filter(lambda s: "|" not in s)
_name = st.from_regex(r"[a-z][a-z0-9_ ]{0,7}[a-z0-9]", fullmatch=True)


@st.composite
def _manifests(draw: st.DrawFn) -> Manifest:
    attributes = draw(
        st.lists(_name.filter(lambda n: n not in RESERVED and not n.startswith("meta_")), max_size=4, unique=True)
    )
    meta_columns = draw(st.lists(_name, max_size=2, unique=True))
    records = []
    for i in range(draw(st.integers(0, 6))):
        labels = {}
        if attributes:
            labels = draw(st.dictionaries(st.sampled_from(attributes), st.lists(_label_value, min_size=1, max_size=3)))
        meta = draw(st.dictionaries(st.sampled_from(meta_columns), _text)) if meta_columns else {}
        records.append(
            Record(
                id=draw(_text),
                image=draw(_text.map(lambda s, i=i: f"images/{i}/{s}.jpg")),
                labels={a: tuple(v) for a, v in labels.items()},
                group=draw(st.none() | _text),
                split=draw(st.sampled_from((None, *SPLITS))),
                title=draw(st.none() | _text | st.just('a, "quoted"\nsecond line, ünïcödé')),
                meta=meta,
            )
        )
    return Manifest(records, attributes=attributes, meta_columns=meta_columns)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=_manifests(), suffix=st.sampled_from(FORMATS))
def test_round_trip_property(m, suffix):
    with tempfile.TemporaryDirectory() as d:
        back = read_manifest(write_manifest(m, Path(d) / f"m{suffix}"))
    assert back.problems == []
    assert back.records == m.records
    if suffix != ".jsonl":
        # CSV and Parquet keep every column, in order; JSONL only has the keys that some row uses
        assert back.attributes == m.attributes
        assert back.meta_columns == m.meta_columns
