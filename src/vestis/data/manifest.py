"""The manifest: one row per image, in CSV, JSONL or Parquet.

Columns: ``id``, ``image`` (path relative to the manifest), optional ``group`` (parent product),
``split`` (train/val/test), ``title``, free-text ``meta_<name>`` columns, and one column per attribute.
Several values in one cell are separated by ``|``; an empty cell is a missing label, not a negative.
In JSONL an attribute may also be a list of strings, and ``null`` is missing.

Reading never raises on a bad row: structural problems (wrong types, empty ids) are collected in
``Manifest.problems`` with their line, and :func:`vestis.data.validate.validate_manifest` adds the
checks that need the taxonomy and the image files.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import reprlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vestis.data.textio import MAX_CSV_FIELD, allow_large_csv_fields, encoding_problem, not_utf8_error, utf8_problem
from vestis.errors import VestisError
from vestis.io import atomic_write, atomic_write_text

__all__ = [
    "FORMATS",
    "RESERVED",
    "SPLITS",
    "Manifest",
    "Problem",
    "Record",
    "read_manifest",
    "split_cell",
    "write_manifest",
]

RESERVED = ("id", "image", "group", "split", "title")
SPLITS = ("train", "val", "test")
FORMATS = (".csv", ".jsonl", ".parquet")
META_PREFIX = "meta_"
SEP = "|"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
MAX_PATH = 4096  # PATH_MAX on Linux: a longer image path cannot name a file
# values quoted in messages stay short: a 4 MB cell or a deeply nested JSON value is shown by its start
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80
_short.maxlevel = 3


@dataclass(frozen=True)
class Problem:
    """One problem in an input file, printed as ``file:line: field: what was expected``."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass
class Record:
    """One manifest row. ``labels`` holds only labelled attributes (a missing label is absent)."""

    id: str
    image: str
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    group: str | None = None
    split: str | None = None
    title: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    line: int = field(default=0, compare=False)  # source line, for messages

    @property
    def group_key(self) -> str:
        """The unit that must not span two splits: the group when given, else the id."""
        return self.group if self.group else self.id


@dataclass
class Manifest:
    """A list of records plus where they came from.

    Attributes:
        records: the rows, in file order.
        attributes: attribute column names, in file order.
        meta_columns: metadata column names (without the ``meta_`` prefix).
        root: directory that ``Record.image`` paths are relative to.
        path: the file read, if any.
        problems: structural problems found while reading.
    """

    records: list[Record]
    attributes: list[str] = field(default_factory=list)
    meta_columns: list[str] = field(default_factory=list)
    root: Path = field(default_factory=Path)
    path: Path | None = None
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def image_path(self, record: Record) -> Path:
        p = Path(record.image)
        return p if p.is_absolute() else self.root / p

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "<manifest>"

    def subset(self, records: Sequence[Record]) -> Manifest:
        return Manifest(list(records), list(self.attributes), list(self.meta_columns), self.root, self.path, [])

    @property
    def columns(self) -> list[str]:
        """Every column in write order."""
        cols = list(RESERVED)
        cols += [f"{META_PREFIX}{m}" for m in self.meta_columns]
        return cols + list(self.attributes)


def split_cell(cell: str) -> tuple[str, ...]:
    """``"a | b"`` -> ``("a", "b")``; an empty cell -> ``()``."""
    return tuple(v.strip() for v in cell.split(SEP) if v.strip())


def _fmt(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise VestisError(f"{path}: unsupported manifest format {suffix or '(none)'!r}; expected one of {FORMATS}")
    return suffix


class _RowParser:
    """Turns a raw row (column -> value) into a Record, collecting problems."""

    def __init__(self, source: str, columns: Sequence[str]) -> None:
        self.source = source
        missing = [c for c in ("id", "image") if c not in columns]
        if missing:
            raise VestisError(f"{source}:1: header: missing required column(s) {missing}; expected id, image, ...")
        self.attributes = [c for c in columns if c not in RESERVED and not c.startswith(META_PREFIX)]
        self.meta_columns = [c[len(META_PREFIX) :] for c in columns if c.startswith(META_PREFIX)]
        self.problems: list[Problem] = []

    def _bad(self, line: int, fld: str, msg: str) -> None:
        self.problems.append(Problem(self.source, line, fld, msg))

    def _scalar(self, row: dict[str, Any], col: str, line: int, *, allow_int: bool = False) -> str | None:
        v = row.get(col)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, str | int) or (isinstance(v, int) and not allow_int):
            self._bad(line, col, f"expected a string, got {type(v).__name__} {_short.repr(v)}")
            return None
        s = str(v).strip()
        return s or None

    def parse(self, row: dict[str, Any], line: int) -> Record | None:
        rid = self._scalar(row, "id", line, allow_int=True)
        image = self._scalar(row, "image", line)
        # no file can have such a path (the OS refuses a NUL byte, and longer paths than PATH_MAX)
        if image is not None and "\x00" in image:
            self._bad(line, "image", "a NUL byte in the path; expected a file path")
            return None
        if image is not None and len(image) > MAX_PATH:
            self._bad(line, "image", f"a path of {len(image):,} characters; expected at most {MAX_PATH:,}")
            return None
        blank = lambda v: v is None or (isinstance(v, str) and not v.strip())  # noqa: E731
        if rid is None and blank(row.get("id")):
            self._bad(line, "id", "expected a non-empty id")
        if image is None and blank(row.get("image")):
            self._bad(line, "image", "expected a path to the image, relative to the manifest")
        split = self._scalar(row, "split", line)
        if split is not None and split not in SPLITS:
            self._bad(line, "split", f"expected one of {list(SPLITS)} or empty, got {split!r}")
            split = None
        labels: dict[str, tuple[str, ...]] = {}
        for a in self.attributes:
            v = row.get(a)
            if v is None:
                continue
            if isinstance(v, str):
                vals = split_cell(v)
            elif isinstance(v, list) and all(isinstance(x, str) for x in v):
                vals = tuple(x.strip() for x in v if x.strip())
            else:
                got = _short.repr(v)
                self._bad(line, a, f"expected a string ('a|b' for several values) or a list of strings, got {got}")
                continue
            if vals:
                labels[a] = vals
        meta = {}
        for m in self.meta_columns:
            v = self._scalar(row, META_PREFIX + m, line, allow_int=True)
            if v is not None:
                meta[m] = v
        if rid is None or image is None:
            return None
        return Record(
            id=rid,
            image=image,
            labels=labels,
            group=self._scalar(row, "group", line, allow_int=True),
            split=split,
            title=self._scalar(row, "title", line),
            meta=meta,
            line=line,
        )


def _check_encoding(path: Path, head: bytes) -> None:
    msg = encoding_problem(head)
    if msg:
        raise VestisError(f"{path}:1: {msg}")


def _spans_rows(raw: list[str], lines: list[str], n: int) -> bool:
    """Whether a row read over several physical ``lines`` is a quote that swallowed rows, not a multi-line cell.

    A cell may hold a newline (titles do), so spanning lines is no error by itself. It is one when the row has
    the wrong field count, when its quote never closes (the csv module reads on to the end of the file), or when
    a line wholly inside a cell would be a complete row of ``n`` fields by itself.
    """
    if len(raw) != n:
        return True
    try:
        for _ in csv.reader(lines, strict=True):
            pass
    except csv.Error:
        return True  # unexpected end of data: the quote runs to the end of the file
    # the lines wholly inside one cell (not its first or last fragment, which share a line with other cells)
    inner = (part for cell in raw for part in _LINE_BREAK.split(cell)[1:-1])
    return any(part.strip() and len(next(csv.reader([part]), [])) == n for part in inner)


def _span_problems(source: str, first: int, lines: list[str], fields: int, n: int) -> list[Problem]:
    """One problem per non-blank physical line of a swallowing quote, so that skipping accounts for each."""
    last = first + len(lines) - 1
    out = [
        Problem(
            source,
            first,
            "row",
            f"a quoted field opened on this line runs on to line {last} ({fields} fields over {len(lines)} lines; "
            f"an unclosed quote?); expected {n} fields with the quote closed on this line",
        )
    ]
    for k, text in enumerate(lines[1:], start=first + 1):
        if text.strip():
            msg = (
                f"inside the quoted field opened on line {first} (an unclosed quote there?); expected a row of its own"
            )
            out.append(Problem(source, k, "row", msg))
    return out


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]], list[Problem]]:
    allow_large_csv_fields()
    with path.open("rb") as fb:
        _check_encoding(path, fb.read(4))
        fb.seek(0)
        text = io.TextIOWrapper(fb, encoding="utf-8-sig", newline="")
        try:
            return _parse_csv(text, str(path))
        except UnicodeDecodeError:
            raise not_utf8_error(path) from None


def _parse_csv(
    text: io.TextIOWrapper, source: str
) -> tuple[list[str], list[tuple[int, dict[str, Any]]], list[Problem]]:
    physical: list[str] = []  # the lines the reader consumed for the current row

    def lines() -> Iterator[str]:
        for line in text:
            physical.append(line)
            yield line

    reader = csv.reader(lines())
    try:
        header = next(reader)
    except StopIteration:
        raise VestisError(f"{source}:1: header: the file is empty; expected a header line") from None
    except csv.Error as e:
        raise VestisError(f"{source}:1: header: {e}; expected the column names") from None
    if any("\x00" in h for h in header):
        raise VestisError(f"{source}:1: header: a NUL byte (UTF-16 text?); expected UTF-8 column names")
    header = [h.strip() for h in header]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise VestisError(f"{source}:1: header: duplicate column(s) {dup}")
    n = len(header)
    rows: list[tuple[int, dict[str, Any]]] = []
    pre: list[Problem] = []
    start = reader.line_num + 1
    while True:
        physical.clear()
        try:
            raw = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            # a field over the limit (the only error of a non-strict reader): it drops the row, goes on after it
            end, start = reader.line_num, reader.line_num + 1
            msg = f"{e}; expected CSV"
            if "field limit" in str(e):
                msg = f"a field over {MAX_CSV_FIELD:,} characters (an unclosed quote?); expected shorter fields"
            pre.extend(Problem(source, k, "row", msg) for k in range(end - len(physical) + 1, end + 1))
            continue
        line, end = start, reader.line_num
        start = end + 1
        if end > line and _spans_rows(raw, physical, n):
            pre.extend(_span_problems(source, line, list(physical), len(raw), n))
            continue
        if not any(c.strip() for c in raw):
            continue
        if len(raw) != n:
            pre.append(Problem(source, line, "row", f"expected {n} fields, got {len(raw)}"))
            continue
        rows.append((line, {h: (c if c.strip() else None) for h, c in zip(header, raw, strict=True)}))
    return header, rows, pre


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > sys.get_int_max_str_digits():
        raise _LongInt(len(digits.lstrip("-")))
    return int(digits)


class _LongInt(ValueError):
    """An integer longer than Python converts (``sys.get_int_max_str_digits``); the row is reported."""


def _read_jsonl(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]], list[Problem]]:
    source = str(path)
    rows: list[tuple[int, dict[str, Any]]] = []
    pre: list[Problem] = []
    columns_seen: dict[str, None] = {}
    with path.open("rb") as f:
        _check_encoding(path, f.read(4))
        f.seek(0)
        # binary lines: each one is decoded on its own, so a bad byte costs its row, not the file
        for i, data in enumerate(f, start=1):
            if i == 1 and data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                bad = utf8_problem(data)
                pre.append(Problem(source, i, "row", bad[1] if bad else "not UTF-8"))
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text, parse_int=_parse_int)
            except json.JSONDecodeError as e:
                pre.append(Problem(source, i, "row", f"expected a JSON object ({e.msg})"))
                continue
            except _LongInt as e:
                msg = (
                    f"an integer of {e.args[0]:,} digits; expected at most {sys.get_int_max_str_digits():,} (quote ids)"
                )
                pre.append(Problem(source, i, "row", msg))
                continue
            except RecursionError:
                pre.append(Problem(source, i, "row", "expected a JSON object (nested too deeply to read)"))
                continue
            if not isinstance(obj, dict):
                pre.append(Problem(source, i, "row", f"expected a JSON object, got {type(obj).__name__}"))
                continue
            for k in obj:
                columns_seen.setdefault(k, None)
            rows.append((i, obj))
    return list(columns_seen) or ["id", "image"], rows, pre


def _read_parquet(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]], list[Problem]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        values = table.to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise VestisError(f"{path}: cannot read Parquet: {e}") from None
    # line = row number + 1, as if the file had a header line like the CSV
    return list(table.column_names), [(i + 2, r) for i, r in enumerate(values)], []


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a CSV, JSONL or Parquet manifest. Rows with structural problems are kept out and reported.

    Every row of the file is either a record or a problem on its line, so that skipping the invalid rows
    accounts for all of them; a quote that swallows the lines after it is a problem on each of those lines.

    Raises:
        VestisError: the file is missing, not UTF-8 (CSV: the line of the first bad byte; JSONL reports bad
            lines as problems), or its header is unusable.
    """
    path = Path(path)
    fmt = _fmt(path)
    if not path.is_file():
        raise VestisError(f"{path}: manifest not found")
    read = {".csv": _read_csv, ".jsonl": _read_jsonl}.get(fmt, _read_parquet)
    columns, rows, pre = read(path)
    parser = _RowParser(str(path), columns)
    records = [r for line, row in rows if (r := parser.parse(row, line)) is not None]
    return Manifest(
        records=records,
        attributes=parser.attributes,
        meta_columns=parser.meta_columns,
        root=path.parent,
        path=path,
        problems=sorted(pre + parser.problems, key=lambda p: p.line),
    )


def _row(m: Manifest, r: Record, *, lists: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"id": r.id, "image": r.image, "group": r.group, "split": r.split, "title": r.title}
    for k in m.meta_columns:
        d[META_PREFIX + k] = r.meta.get(k)
    for a in m.attributes:
        v = r.labels.get(a)
        d[a] = (list(v) if lists else SEP.join(v)) if v else None
    return d


def write_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write ``manifest`` atomically in the format given by ``path``'s suffix."""
    path = Path(path)
    fmt = _fmt(path)
    cols = manifest.columns
    if fmt == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        # the minimal quoting of the csv module leaves a bare \r unquoted, which would split the row on reading
        wq = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
        w.writerow(cols)
        for r in manifest.records:
            d = _row(manifest, r, lists=False)
            cells = ["" if d[c] is None else d[c] for c in cols]
            (wq if any("\r" in str(c) for c in cells) else w).writerow(cells)
        atomic_write_text(path, buf.getvalue())
    elif fmt == ".jsonl":
        lines = []
        for r in manifest.records:
            d = _row(manifest, r, lists=True)
            lines.append(json.dumps({k: v for k, v in d.items() if v is not None}, ensure_ascii=False))
        atomic_write_text(path, "".join(line + "\n" for line in lines))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [_row(manifest, r, lists=False) for r in manifest.records]
        table = pa.table({c: pa.array([d[c] for d in rows], type=pa.string()) for c in cols})
        atomic_write(path, lambda f: pq.write_table(table, f))
    return path
