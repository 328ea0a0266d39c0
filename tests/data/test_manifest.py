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
                # a NUL byte cannot be in a path: it is a problem (tested below), not a round trip
                image=draw(_text.filter(lambda s: "\x00" not in s).map(lambda s, i=i: f"images/{i}/{s}.jpg")),
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


# --- hostile files: every line is a record or a problem, never a traceback ---------------------------------------


def _thirty_rows(tmp_path: Path, *, title_last: bool, closing_quote_on: int | None = None) -> Path:
    """30 data rows; row 5 (line 6) opens a quote in its title that is never closed (or closed on a later line)."""
    cols = ["id", "image", "title", "colour"] if not title_last else ["id", "image", "colour", "title"]
    lines = [",".join(cols)]
    for i in range(1, 31):
        cells = {"id": f"r{i}", "image": f"{i}.jpg", "colour": "red", "title": f"Shirt {i}"}
        if i == 5:
            cells["title"] = '"Shirt 5'
        if closing_quote_on is not None and i + 1 == closing_quote_on:
            cells["title"] = 'Shirt "x" blue'
        lines.append(",".join(cells[c] for c in cols))
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("title_last", "closing", "last"),
    [(False, None, 31), (True, None, 31), (False, 20, 20), (True, 20, 20)],
    ids=["count-differs", "to-the-end", "closed-later", "closed-later-last-column"],
)
def test_unclosed_quote_reports_every_swallowed_line(tmp_path, title_last, closing, last):
    from vestis.data.taxonomy import Taxonomy
    from vestis.data.validate import clean_catalog, validate_manifest

    path = _thirty_rows(tmp_path, title_last=title_last, closing_quote_on=closing)
    m = read_manifest(path)
    problem_lines = sorted({p.line for p in m.problems})
    assert problem_lines == list(range(6, last + 1))
    assert m.problems[0].message.startswith(f"a quoted field opened on this line runs on to line {last} (")
    assert m.problems[1].message == (
        "inside the quoted field opened on line 6 (an unclosed quote there?); expected a row of its own"
    )
    assert [r.line for r in m.records] == [2, 3, 4, 5, *range(last + 1, 32)]
    # skipping the invalid rows accounts for every data row of the file
    tax = Taxonomy.from_dict({"attributes": [{"name": "colour", "values": ["red", "blue"]}]})
    problems = validate_manifest(m, tax, check_images=False)
    kept = clean_catalog(m, tax, problems, skip_invalid=True, skipped_path=tmp_path / "skipped.csv")
    skipped = (tmp_path / "skipped.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(skipped) == last - 5
    assert len(kept) + len(skipped) == 30


def test_multiline_cells_and_blank_lines_are_not_rows(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('id,image,title\na,a.jpg,"one\n\ntwo, three"\n\nb,b.jpg,"x\ny\nz"\n', encoding="utf-8")
    m = read_manifest(path)
    assert m.problems == []
    assert [(r.id, r.line, r.title) for r in m.records] == [("a", 2, "one\n\ntwo, three"), ("b", 6, "x\ny\nz")]
    # a swallowed span skips its blank lines: they were never rows
    path.write_text('id,image,title\na,a.jpg,"open\n\nb,b.jpg,t\n', encoding="utf-8")
    assert [p.line for p in read_manifest(path).problems] == [2, 4]


def test_long_fields(tmp_path):
    from vestis.data.textio import MAX_CSV_FIELD

    path = tmp_path / "m.csv"
    path.write_text(f"id,image,title\na,a.jpg,{'t' * 200_000}\nb,b.jpg,ok\n", encoding="utf-8")
    m = read_manifest(path)
    assert m.problems == [] and len(m.records[0].title) == 200_000  # the csv module alone stops at 128 KiB
    path.write_text(f"id,image,title\na,a.jpg,ok\nb,b.jpg,{'t' * (MAX_CSV_FIELD + 1)}\nc,c.jpg,ok\n", encoding="utf-8")
    m = read_manifest(path)
    assert [r.id for r in m.records] == ["a", "c"]
    assert [(p.line, p.field) for p in m.problems] == [(3, "row")]
    assert m.problems[0].message == "a field over 4,194,304 characters (an unclosed quote?); expected shorter fields"
    path.write_text(f"id,image\na,{'x/' * 3000}a.jpg\nb,{'y' * 300}.jpg\n", encoding="utf-8")
    m = read_manifest(path)
    assert [(p.line, p.message) for p in m.problems] == [(2, "a path of 6,005 characters; expected at most 4,096")]
    assert [r.id for r in m.records] == ["b"]  # too long a name is a missing image for validate, not a path error


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("id,image,title\na,a.jpg,ok\nb,b.jpg,Été\n".encode("latin-1"), "m.csv:3: not UTF-8: byte 0xc9 at column 9"),
        ("id,image\na,a.jpg\n".encode("utf-16"), "m.csv:1: not UTF-8: UTF-16 text (byte-order mark ff fe)"),
        ("id,image\na,a.jpg\n".encode("utf-16-le"), "m.csv:1: not UTF-8: NUL bytes (UTF-16 text without a"),
        ("id,image\na,a.jpg\n".encode("utf-32"), "m.csv:1: not UTF-8: UTF-32 text"),
        (b"id,image\r\na,a.jpg\r\n" * 5000 + b"b,\xff.jpg\r\n", "m.csv:10001: not UTF-8: byte 0xff at column 3"),
    ],
)
def test_csv_not_utf8(tmp_path, data, message):
    path = tmp_path / "m.csv"
    path.write_bytes(data)
    with pytest.raises(VestisError) as e:
        read_manifest(path)
    assert str(e.value).startswith(f"{tmp_path}/{message}")


def test_csv_nul_bytes(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"id,image,title\na,a\x00.jpg,t\nb,b.jpg,t\x00itle\n")
    m = read_manifest(path)
    assert [(p.line, p.field, p.message) for p in m.problems] == [
        (2, "image", "a NUL byte in the path; expected a file path")
    ]
    assert [(r.id, r.title) for r in m.records] == [("b", "t\x00itle")]  # text may hold one; a path may not


def test_jsonl_hostile_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [
        b'{"id": "a", "image": "a.jpg"}',
        b'{"id": "b", "image": "caf\xe9.jpg"}',
        b'{"id": "c", "image": "c.jpg", "t": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"id": ' + b"7" * 5000 + b', "image": "d.jpg"}',
        b'{"id": ' + b"7" * 4300 + b', "image": "e.jpg"}',
        b'{"id": "f", "image": "f.jpg", "t": ' + b"[" * 500 + b"]" * 500 + b"}",
    ]
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    m = read_manifest(path)
    assert [(p.line, p.field) for p in m.problems] == [(2, "row"), (3, "row"), (4, "row"), (6, "t")]
    msgs = [p.message for p in m.problems]
    assert msgs[0].startswith("not UTF-8: byte 0xe9 at column 26 (Latin-1 or Windows-1252?)")
    assert msgs[1] == "expected a JSON object (nested too deeply to read)"
    assert msgs[2] == "an integer of 5,000 digits; expected at most 4,300 (quote ids)"
    assert msgs[3].startswith("expected a string ('a|b' for several values) or a list of strings, got [[[[...]]]]")
    assert [r.id for r in m.records] == ["a", "7" * 4300, "f"]
    path.write_bytes('{"id": "a", "image": "a.jpg"}\n'.encode("utf-16"))
    with pytest.raises(VestisError, match=r"m\.jsonl:1: not UTF-8: UTF-16 text"):
        read_manifest(path)
