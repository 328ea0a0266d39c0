"""The hostile-input corpus: every kind of bad input that once ended in a traceback, a hang or a lost row.

Each :class:`Case` writes its files into a folder of its own and says, per command, what a correct run does:
``error`` (exit 1, an ``error:`` line naming the file and, where there is one, the line), ``problems`` (exit 1,
``vestis validate`` lists the problems as ``file:line: ...``) or ``ok`` (exit 0: the input is accepted or its bad
rows are skipped and reported). ``tests/hostile/test_cli_corpus.py`` runs every case through its commands;
to add a kind, add a builder and a :class:`Case` to :data:`CASES`.

Usage::

    python tests/hostile/make_corpus.py OUT            # write the corpus into OUT, one folder per case
    python tests/hostile/make_corpus.py --report       # run every case through the CLI, print a table
    python bench/hostile.py                            # the same, written to docs/benchmarks.md

Nothing here is committed as binary data: every file is generated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests` and `vestis` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from PIL import Image

__all__ = ["CASES", "COMMANDS", "Case", "Run", "build", "command_args", "run_case", "run_corpus", "summary_table"]

COMMANDS = ("validate", "stats", "train", "import", "predict")
TAXONOMY = """\
name: hostile
attributes:
  - name: category
    values: [shirt, trousers]
  - name: colour
    values: [red, blue]
"""
HEADER = "id,image,title,category,colour"
STYLES_HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
STYLE_ROW = "{id},Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,{title}"
# three products that differ in every attribute, so that the imported taxonomy has two values or more each
STYLE_ROWS = (
    "1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Shirt 1",
    "2,Women,Footwear,Shoes,Casual Shoes,White,Summer,2012,Sports,Shoe 2",
    "3,Men,Apparel,Bottomwear,Jeans,Black,Winter,2013,Formal,Jeans 3",
)


@dataclass
class Built:
    """The files of one case: which path plays which role for the commands."""

    root: Path
    manifest: Path | None = None
    taxonomy: Path | None = None
    config: str = "tiny"
    styles: Path | None = None  # the fashion-product source folder
    model: Path | None = None
    inputs: list[Path] = field(default_factory=list)
    out: dict[str, Path] = field(default_factory=dict)  # per command, when --out itself is the hostile input
    extra: dict[str, list[str]] = field(default_factory=dict)  # per command, further arguments


@dataclass(frozen=True)
class Case:
    """One hostile input.

    Attributes:
        name: short id, used as the folder name and the test id.
        kind: the input kind, as the docs table lists it.
        build: writes the files into a folder and says which is which.
        expect: per command, ``error``, ``problems`` or ``ok``.
        where: what the message must name: a file name relative to the case folder, ``:line`` included
            where the error has a line.
        lines: for ``problems``: the lines that must be listed.
        check: further assertions on the files after ``command`` ran (``check(built, command)``).
        slow: commands whose run is left to ``make test-all`` (an accepted ``stats`` run draws its charts).
        xfail: a reason when the fix for this case is known to be missing.
    """

    name: str
    kind: str
    build: Callable[[Path], Built]
    expect: dict[str, str]
    where: str | dict[str, str] = ""
    lines: tuple[int, ...] = ()
    check: Callable[[Built, str], None] | None = None
    slow: tuple[str, ...] = ()
    xfail: str | None = None

    def where_for(self, command: str) -> str:
        return self.where.get(command, "") if isinstance(self.where, dict) else self.where


# --- helpers --------------------------------------------------------------------------------------------------
def _image(path: Path, fmt: str = "JPEG", size: tuple[int, int] = (24, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 40, 40)).save(path, format=fmt)
    return path


def _catalog(root: Path, rows: list[str] | None = None, *, taxonomy: str | bytes = TAXONOMY) -> Built:
    """A valid little catalog (four images, manifest.csv, taxonomy.yaml); ``rows`` replace the data rows."""
    for i in range(1, 5):
        _image(root / "images" / f"{i}.jpg")
    if rows is None:
        rows = [f"{i},images/{i}.jpg,Shirt {i},{'shirt' if i % 2 else 'trousers'},red" for i in range(1, 5)]
    (root / "manifest.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    tax = root / "taxonomy.yaml"
    tax.write_bytes(taxonomy if isinstance(taxonomy, bytes) else taxonomy.encode())
    return Built(root, manifest=root / "manifest.csv", taxonomy=tax)


def _manifest_bytes(root: Path, name: str, data: bytes) -> Built:
    b = _catalog(root)
    b.manifest = root / name
    b.manifest.write_bytes(data)
    return b


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: ``width ** levels`` strings from under 2 KB."""
    text = "a0: &a0 [" + ", ".join(['"lol"'] * width) + "]\n"
    for i in range(1, levels):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]\n"
    return text


def _styles(root: Path, rows: list[str] | bytes) -> Built:
    src = root / "fashion-product"
    (src / "images").mkdir(parents=True, exist_ok=True)
    for i in (1, 2, 3):
        _image(src / "images" / f"{i}.jpg")
    data = rows if isinstance(rows, bytes) else ("\n".join([STYLES_HEADER, *rows]) + "\n").encode()
    (src / "styles.csv").write_bytes(data)
    return Built(root, styles=src)


def _good_styles() -> list[str]:
    return list(STYLE_ROWS)


def shared_model(root: Path) -> Path:
    """One random tiny checkpoint beside the case folders, made on first use (the cases only differ in data)."""
    from tests.inference.conftest import make_checkpoint

    path = root.parent / "_model" / "tiny.ckpt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make_checkpoint(path)
    return path


def _predict(root: Path) -> Built:
    """A random tiny checkpoint and four images to tag."""
    b = _catalog(root)
    b.model = shared_model(root)
    b.inputs = [root / "images"]
    return b


# --- the cases ------------------------------------------------------------------------------------------------
_DEEP = b"[" * 100_000 + b"]" * 100_000
ROWS30 = [f"r{i},images/{1 + i % 4}.jpg,Shirt {i},shirt,red" for i in range(1, 31)]


def unclosed_quote(root: Path) -> Built:
    """Issue 9: line 6 of a 30-row CSV opens a quote that never closes, swallowing lines 6-31."""
    rows = list(ROWS30)
    rows[4] = 'r5,images/2.jpg,"Shirt 5,shirt,red'
    return _catalog(root, rows)


def unclosed_quote_skip(root: Path) -> Built:
    b = unclosed_quote(root)
    b.extra["train"] = ["--skip-invalid"]
    return b


def cell_over_limit(root: Path) -> Built:
    from vestis.data.textio import MAX_CSV_FIELD

    rows = ["1,images/1.jpg,ok,shirt,red", f'2,images/2.jpg,"{"x" * (MAX_CSV_FIELD + 10)}",shirt,red']
    return _catalog(root, [*rows, "3,images/3.jpg,ok,shirt,red"])


def cell_200k(root: Path) -> Built:
    return _catalog(root, ["1,images/1.jpg,ok,shirt,red", f"2,images/2.jpg,{'t' * 200_000},shirt,red"])


def long_image_name(root: Path) -> Built:
    return _catalog(root, ["1,images/1.jpg,ok,shirt,red", f"2,images/{'n' * 300}.jpg,long,shirt,red"])


def eps_as_jpg(root: Path) -> Built:
    b = _predict(root)
    # an EPS file named .jpg: Pillow would hand it to Ghostscript
    (root / "images" / "2.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    b.inputs = [root / "images" / "2.jpg"]
    return b


def huge_int_id_csv(root: Path) -> Built:
    return _catalog(root, [f"{'7' * 5000},images/1.jpg,t,shirt,red", "2,images/2.jpg,t,shirt,red"])


def jsonl(lines: list[bytes]) -> Callable[[Path], Built]:
    def make(root: Path) -> Built:
        return _manifest_bytes(root, "manifest.jsonl", b"\n".join(lines) + b"\n")

    return make


GOOD_JSONL = b'{"id": "1", "image": "images/1.jpg", "category": "shirt"}'
CSV_TEXT = HEADER + "\n1,images/1.jpg,ok,shirt,red\n2,images/2.jpg,Été,shirt,red\n"


def config(text: str | bytes) -> Callable[[Path], Built]:
    def make(root: Path) -> Built:
        b = _catalog(root)
        path = root / "config.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        b.config = str(path)
        return b

    return make


def config_base_loop(root: Path) -> Built:
    b = _catalog(root)
    (root / "config.yaml").write_text(f"base: {root / 'other.yaml'}\n", encoding="utf-8")
    (root / "other.yaml").write_text(f"base: {root / 'config.yaml'}\n", encoding="utf-8")
    b.config = str(root / "config.yaml")
    return b


def taxonomy(text: str | bytes) -> Callable[[Path], Built]:
    return lambda root: _catalog(root, taxonomy=text)


def styles(rows: list[str] | bytes) -> Callable[[Path], Built]:
    return lambda root: _styles(root, rows)


def out_under_file(root: Path) -> Built:
    """Every --out points below a regular file: no folder can be made there (even as root)."""
    b = _predict(root)
    (root / "afile").write_text("not a folder\n", encoding="utf-8")
    _styles(root, _good_styles())
    b.styles = root / "fashion-product"
    b.out = {c: root / "afile" / "x" for c in ("stats", "train", "import")}
    b.out["predict"] = root / "afile" / "tags.jsonl"
    return b


def out_is_folder(root: Path) -> Built:
    """--out names an existing folder where a file is expected (predict), or a file where a folder is."""
    b = _predict(root)
    (root / "afile").write_text("not a folder\n", encoding="utf-8")
    (root / "tags.jsonl").mkdir()
    _styles(root, _good_styles())
    b.styles = root / "fashion-product"
    b.out = {"stats": root / "afile", "train": root / "afile", "import": root / "afile", "predict": root / "tags.jsonl"}
    return b


def resume_not_utf8(root: Path) -> Built:
    """A predict output to resume whose second line holds a byte that is not UTF-8."""
    b = _predict(root)
    out = root / "tags.jsonl"
    out.write_bytes(b'{"id": "1.jpg", "attributes": {}}\n{"id": "caf\xe9.jpg", "attributes": {}}\n')
    b.out = {"predict": out}
    return b


def resume_deep(root: Path) -> Built:
    """A predict output to resume whose second line nests 100,000 lists deep."""
    b = _predict(root)
    out = root / "tags.jsonl"
    out.write_bytes(b'{"id": "1.jpg", "attributes": {}}\n{"id": "2.jpg", "attributes": ' + _DEEP + b"}\n")
    b.out = {"predict": out}
    return b


def predict_manifest_not_utf8(root: Path) -> Built:
    b = _predict(root)
    bad = root / "latin1.csv"
    bad.write_bytes(CSV_TEXT.encode("latin-1"))
    b.inputs = [bad]
    return b


# --- checks of the files an accepted run leaves -----------------------------------------------------------------
def check_skipped(b: Built, command: str) -> None:
    """train --skip-invalid: the skipped rows and the kept rows add up to the 30 data rows of the file."""
    skipped = (b.root / f"out-{command}" / "skipped_rows.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(skipped) == 26, skipped
    assert sorted(int(line.split(",")[1]) for line in skipped) == list(range(6, 32))
    from vestis.data.manifest import read_manifest

    assert len(read_manifest(b.manifest)) + len(skipped) == 30


def check_error_row(b: Built, command: str) -> None:
    """predict: the EPS file is an error row; nothing handed it to a decoder outside the allowed formats."""
    if command != "predict":
        return
    rows = [json.loads(line) for line in (b.root / "tags.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1 and "EPS data, not an allowed image format" in rows[0]["error"], rows


def check_imported(n: int) -> Callable[[Built, str], None]:
    def check(b: Built, command: str) -> None:
        text = (b.root / f"out-{command}" / "manifest.csv").read_text(encoding="utf-8")
        ids = [line.split(",", 1)[0] for line in text.splitlines()[1:]]
        assert ids == [str(i) for i in range(1, n + 1)], ids[:5]

    return check


E, P, OK = "error", "problems", "ok"
MANIFEST_CMDS = ("validate", "stats", "train")
MANIFEST_CMDS_P = (*MANIFEST_CMDS, "predict")


def _all(outcome: str, commands: tuple[str, ...] = MANIFEST_CMDS) -> dict[str, str]:
    return dict.fromkeys(commands, outcome)


CASES: tuple[Case, ...] = (
    # --- item 9: rows swallowed by a quote -------------------------------------------------------------------
    Case("csv-unclosed-quote", "CSV: an unclosed quote swallows 26 rows", unclosed_quote,
         {"validate": P, "stats": OK, "train": E, "predict": E}, "manifest.csv", tuple(range(6, 32))),
    Case("csv-unclosed-quote-skip", "CSV: the same, train --skip-invalid", unclosed_quote_skip,
         {"train": OK}, check=check_skipped),
    # --- item 11: encodings ----------------------------------------------------------------------------------
    Case("csv-latin1", "CSV manifest in Latin-1",
         lambda r: _manifest_bytes(r, "m.csv", CSV_TEXT.encode("latin-1")), _all(E, MANIFEST_CMDS_P), "m.csv:3"),
    Case("csv-utf16-bom", "CSV manifest in UTF-16 (BOM)",
         lambda r: _manifest_bytes(r, "m.csv", CSV_TEXT.encode("utf-16")), _all(E, MANIFEST_CMDS_P), "m.csv:1"),
    Case("csv-utf16-nobom", "CSV manifest in UTF-16 (no BOM)",
         lambda r: _manifest_bytes(r, "m.csv", CSV_TEXT.encode("utf-16-le")), _all(E), "m.csv:1"),
    Case("jsonl-bad-byte", "JSONL: a bad byte on one line",
         jsonl([GOOD_JSONL, b'{"id": "2", "image": "images/2.jpg", "category": "shirt\xff"}']),
         {"validate": P, "stats": OK, "train": E, "predict": E}, "manifest.jsonl", (2,), slow=("stats",)),
    Case("taxonomy-latin1", "taxonomy in Latin-1", taxonomy(TAXONOMY.replace("hostile", "hôtel").encode("latin-1")),
         _all(E), "taxonomy.yaml:1"),
    Case("taxonomy-utf16", "taxonomy in UTF-16", taxonomy(TAXONOMY.encode("utf-16")), _all(E), "taxonomy.yaml:1"),
    Case("config-latin1", "train config in Latin-1", config("# réglages\ntrain: {epochs: 1}\n".encode("latin-1")),
         {"train": E}, "config.yaml:1"),
    Case("styles-latin1", "styles.csv in Latin-1",
         styles((STYLES_HEADER + "\n1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Été\n").encode("latin-1")),
         {"import": E}, "fashion-product/styles.csv:2"),
    Case("styles-utf16", "styles.csv in UTF-16", styles((STYLES_HEADER + "\n").encode("utf-16")),
         {"import": E}, "fashion-product/styles.csv:1"),
    Case("parquet-garbage", "Parquet manifest of random bytes",
         lambda r: _manifest_bytes(r, "m.parquet", b"PAR1" + bytes(range(256)) * 4 + b"PAR1"), _all(E, MANIFEST_CMDS_P),
         "m.parquet"),
    Case("csv-empty", "an empty CSV manifest", lambda r: _manifest_bytes(r, "m.csv", b""), _all(E), "m.csv:1"),
    Case("taxonomy-empty", "an empty taxonomy", taxonomy(""), _all(E), "taxonomy.yaml:1"),
    # --- item 11: sizes and depths ---------------------------------------------------------------------------
    Case("csv-cell-over-limit", "CSV: a 4 MiB+ cell", cell_over_limit,
         {"validate": P, "stats": OK, "train": E, "predict": E}, "manifest.csv", (3,), slow=("stats",)),
    Case("csv-cell-200k", "CSV: a 200 KB cell (accepted)", cell_200k, {"validate": OK, "stats": OK}, slow=("stats",)),
    Case("styles-title-300k", "styles.csv: a 300 KB quoted title (accepted)",
         styles([*_good_styles()[:2], STYLE_ROWS[2].replace("Jeans 3", '"' + "t" * 300_000 + '"')]), {"import": OK},
         check=check_imported(3)),
    Case("styles-title-over-limit", "styles.csv: a 4 MiB+ quoted title (row skipped)",
         styles([*_good_styles(), STYLE_ROW.format(id=4, title='"' + "t" * 4_200_000 + '"')]), {"import": OK},
         check=check_imported(3)),
    Case("jsonl-deep", "JSONL: 100,000 nested lists", jsonl([GOOD_JSONL, b'{"id": "2", "t": ' + _DEEP + b"}"]),
         {"validate": P, "stats": OK, "train": E, "predict": E}, "manifest.jsonl", (2,), slow=("stats",)),
    Case("taxonomy-deep", "taxonomy: 20,000 nested levels",
         taxonomy("attributes: " + "[" * 20_000 + "]" * 20_000 + "\n"), _all(E), "taxonomy.yaml:1"),
    Case("config-deep", "train config: 20,000 nested levels", config("train: " + "[" * 20_000 + "]" * 20_000),
         {"train": E}, "config.yaml:1"),
    Case("jsonl-huge-int", "JSONL: a 5,000-digit integer id",
         jsonl([GOOD_JSONL, b'{"id": ' + b"7" * 5000 + b', "image": "images/2.jpg"}']),
         {"validate": P, "stats": OK, "train": E, "predict": E}, "manifest.jsonl", (2,), slow=("stats",)),
    Case("csv-huge-int", "CSV: a 5,000-digit id (kept as text)", huge_int_id_csv,
         {"validate": OK, "stats": OK, "predict": OK},
         slow=("stats",)),
    Case("taxonomy-huge-int", "taxonomy: a 5,000-digit value",
         taxonomy(TAXONOMY.replace("[red, blue]", "[red, " + "7" * 5000 + "]")), _all(E), "taxonomy.yaml:6"),
    Case("styles-huge-id", "styles.csv: a 5,000-digit id (row skipped)",
         styles([*_good_styles(), STYLE_ROW.format(id="7" * 5000, title="x")]), {"import": OK},
         check=check_imported(3)),
    Case("long-image-name", "manifest: a 300-character image name", long_image_name,
         {"validate": P, "stats": OK, "predict": OK},
         "manifest.csv", (3,), slow=("stats",)),
    # --- items 10 and 12: aliases and duplicate keys ---------------------------------------------------------
    Case("taxonomy-billion-laughs", "taxonomy: billion laughs (0.5 KB, 9**9 strings)",
         taxonomy(billion_laughs() + "attributes: [{name: c, values: *a8}]\n"), _all(E), "taxonomy.yaml:6"),
    Case("taxonomy-self-alias", "taxonomy: a self-referencing alias",
         taxonomy("attributes: &a\n  - name: c\n    values: *a\n"), _all(E), "taxonomy.yaml:3"),
    Case("taxonomy-duplicate-key", "taxonomy: a duplicate mapping key",
         taxonomy(TAXONOMY.replace("name: hostile\n", "name: hostile\nname: again\n")), _all(E), "taxonomy.yaml:2"),
    Case("config-billion-laughs", "train config: billion laughs (0.5 KB)", config(billion_laughs()), {"train": E},
         "config.yaml:6"),
    Case("config-duplicate-key", "train config: a duplicate key", config("train:\n  epochs: 1\n  epochs: 2\n"),
         {"train": E}, "config.yaml:3"),
    Case("config-base-loop", "train config: base: chain that loops", config_base_loop, {"train": E}, "config.yaml"),
    # --- outputs ---------------------------------------------------------------------------------------------
    Case("out-under-file", "--out below a regular file", out_under_file,
         _all(E, ("stats", "train", "import", "predict")), "afile"),
    Case("out-is-folder", "--out a folder for a file, a file for a folder", out_is_folder,
         _all(E, ("stats", "train", "import", "predict")),
         {"stats": "afile", "train": "afile", "import": "afile", "predict": "tags.jsonl"}),
    Case("predict-resume-not-utf8", "predict: the output to resume holds invalid UTF-8", resume_not_utf8,
         {"predict": E}, "tags.jsonl:2"),
    Case("predict-resume-deep", "predict: the output to resume nests 100,000 deep", resume_deep,
         {"predict": E}, "tags.jsonl:2"),
    Case("predict-manifest-latin1", "predict: an input manifest in Latin-1", predict_manifest_not_utf8,
         {"predict": E}, "latin1.csv:3"),
    # --- formats and names handled by the image and importer checks ------------------------------------------
    Case("eps-as-jpg", "an EPS file named .jpg", eps_as_jpg, {"validate": P, "predict": OK}, "manifest.csv", (3,),
         check=check_error_row),
    Case("styles-id-traversal", "styles.csv: id ../../x (row skipped)",
         styles([*_good_styles(), STYLE_ROW.format(id="../../x", title="x")]), {"import": OK},
         check=check_imported(3)),
)  # fmt: skip


def build(case: Case, root: Path) -> Built:
    """Write ``case``'s files into ``root`` (created)."""
    root.mkdir(parents=True, exist_ok=True)
    return case.build(root)


def command_args(b: Built, command: str) -> list[str]:
    """The ``vestis`` arguments that run ``command`` on the files of ``b``."""
    out = b.out.get(command, b.root / ("tags.jsonl" if command == "predict" else f"out-{command}"))
    extra = b.extra.get(command, [])
    tax = ["--taxonomy", str(b.taxonomy)] if b.taxonomy is not None else []
    if command == "validate":
        return ["validate", str(b.manifest), *tax, *extra]
    if command == "stats":
        return ["stats", str(b.manifest), "--out", str(out), *tax, *extra]
    if command == "train":
        return ["train", "--data", str(b.manifest), *tax, "--config", b.config, "--out", str(out),
                "--device", "cpu", *extra, "train.max_steps=1", "train.epochs=1", "data.image_size=32"]  # fmt: skip
    if command == "import":
        return ["import", "fashion-product", str(b.styles), "--out", str(out), *extra]
    if command == "predict":
        # a manifest case tags its manifest with the shared model
        model = b.model if b.model is not None else shared_model(b.root)
        ins = [str(p) for p in b.inputs] or [str(b.manifest)]
        return ["predict", str(model), *ins, "--out", str(out), "--workers", "0", "--no-progress", *extra]
    raise ValueError(f"unknown command {command!r}")


@dataclass
class Run:
    """What one command did with one case."""

    case: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stdout + self.stderr

    def verdict(self, expected: str) -> str:
        """``clean`` when the command did what the case expects, else what went wrong."""
        if self.timed_out:
            return "hang"
        if self.traceback or self.exit_code not in (0, 1):
            return "traceback"
        return "clean" if self.exit_code == (0 if expected == OK else 1) else f"exit {self.exit_code}"


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`_Timeout` in the main thread after ``seconds`` (a hang in Python code ends)."""

    def fire(*_: object) -> None:
        raise _Timeout

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_case(b: Built, case: Case, command: str, *, timeout: float | None = 120.0) -> Run:
    """Run ``command`` on ``b`` in-process through the Typer runner, as the tests do.

    Args:
        b: the case's files.
        case: the case.
        command: one of :data:`COMMANDS`.
        timeout: seconds after which the run is stopped and counts as a hang (SIGALRM); ``None`` sets no alarm,
            for callers that bound the time themselves (pytest-timeout uses the same signal).
    """
    from typer.testing import CliRunner

    import vestis.cli

    runner = CliRunner()
    args = command_args(b, command)
    start = time.perf_counter()
    try:
        with _deadline(timeout) if timeout is not None else contextlib.nullcontext():
            res = runner.invoke(vestis.cli.app, args)
    except _Timeout:
        return Run(case.name, command, -1, "", "", time.perf_counter() - start, timed_out=True)
    out, err = res.stdout, res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        err += "".join(traceback.format_exception(res.exception))
    return Run(case.name, command, res.exit_code, out, err, time.perf_counter() - start)


def run_corpus(timeout: float = 120.0, *, progress: bool = False) -> list[tuple[Case, str, Run]]:
    """Every case through every command it concerns, in a temporary folder; ``(case, command, run)`` each."""
    results = []
    with tempfile.TemporaryDirectory() as d:
        for case in CASES:
            b = build(case, Path(d) / case.name)
            for command, expected in case.expect.items():
                r = run_case(b, case, command, timeout=timeout)
                results.append((case, command, r))
                if progress:
                    print(f"{case.name} / {command}: {r.verdict(expected)} ({r.seconds:.1f} s)", file=sys.stderr)
    return results


def summary_table(results: list[tuple[Case, str, Run]]) -> str:
    """Markdown: per command, the inputs tried and how each ended."""
    counts: dict[str, Counter[str]] = {c: Counter() for c in COMMANDS}
    slowest: dict[str, float] = dict.fromkeys(COMMANDS, 0.0)
    for case, command, r in results:
        expected = case.expect[command]
        verdict = r.verdict(expected)
        counts[command]["inputs"] += 1
        counts[command][expected if verdict == "clean" else verdict] += 1
        slowest[command] = max(slowest[command], r.seconds)
    lines = [
        "| command | inputs tried | clean error (exit 1) | problems listed (exit 1) | accepted or rows skipped "
        "(exit 0) | tracebacks | hangs | other | slowest run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in COMMANDS:
        n = counts[c]
        other = n["inputs"] - n[E] - n[P] - n[OK] - n["traceback"] - n["hang"]
        lines.append(
            f"| {c} | {n['inputs']} | {n[E]} | {n[P]} | {n[OK]} | {n['traceback']} | {n['hang']} | {other} "
            f"| {slowest[c]:.1f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path, help="write the corpus here (one folder per case)")
    ap.add_argument("--report", action="store_true", help="run every case through the CLI and print the table")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before a run counts as a hang")
    args = ap.parse_args(argv)
    if args.report:
        print(summary_table(run_corpus(args.timeout, progress=True)))
        return
    if args.out is None:
        ap.error("give OUT or --report")
    for case in CASES:
        build(case, args.out / case.name)
    print(f"wrote {len(CASES)} cases to {args.out}")


if __name__ == "__main__":
    main()
