"""Check a manifest against its taxonomy and its image files, and keep only the valid rows for training.

:func:`validate_manifest` returns every problem, each printed as ``file:line: field: what was expected``:
the structural ones found while reading (:attr:`Manifest.problems`) plus

* ``unknown-column``: an attribute column the taxonomy does not define (use ``meta_<name>`` for free text);
* ``unknown-category`` / ``unknown-value``: a value that is not in the taxonomy;
* ``multiple-values``: several values in a single-label attribute;
* ``not-applicable``: a value for an attribute whose ``applies_to`` excludes the row's category;
* ``duplicate-id``: the same id on several rows (every row is reported);
* ``group-split``: a group whose rows sit in different splits (the rows outside its most common split);
* ``outside-root`` (with ``root``): the image path resolves (``..``, absolute paths, symlinks) outside the
  root folder; such an image is not opened;
* ``missing-image``, ``bad-image``, ``image-too-large``: the image file is absent, does not decode fully,
  or has more pixels than the cap (read from the header, before any pixel is decoded).

:func:`clean_catalog` turns that list into the manifest a training run may use: it refuses to go on
unless asked to skip the invalid rows, and then lists every skipped row in a CSV file.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vestis.data.catalog import UnsafePath, confined_image_path, load_catalog
from vestis.data.images import DEFAULT_MAX_PIXELS, ImageTooLarge, check_image
from vestis.data.manifest import Manifest, Problem, Record
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.io import atomic_write_text

__all__ = [
    "KINDS",
    "ProgressFn",
    "ValidationProblem",
    "clean_catalog",
    "problem_kind",
    "summarize",
    "validate_file",
    "validate_manifest",
]

log = logging.getLogger(__name__)

KINDS = (
    "format",
    "unknown-column",
    "unknown-category",
    "unknown-value",
    "multiple-values",
    "not-applicable",
    "duplicate-id",
    "group-split",
    "outside-root",
    "missing-image",
    "bad-image",
    "image-too-large",
)
# Problems about the file as a whole: skipping rows cannot fix them.
_FILE_KINDS = frozenset({"unknown-column"})
_MAX_LISTED = 20

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while images are checked."""


@dataclass(frozen=True)
class ValidationProblem(Problem):
    """A :class:`~vestis.data.manifest.Problem` with its kind (one of :data:`KINDS`), for summaries."""

    kind: str = "format"


def problem_kind(problem: Problem) -> str:
    """The kind of ``problem``; problems found while reading the manifest are ``format``."""
    return problem.kind if isinstance(problem, ValidationProblem) else "format"


def _fmt_values(values: Sequence[str], limit: int = 12) -> str:
    """``['a', 'b', ...]``, shortened for long value lists so that one problem stays one readable line."""
    shown = [repr(v) for v in values[:limit]]
    more = f", ... ({len(values) - limit} more)" if len(values) > limit else ""
    return "[" + ", ".join(shown) + more + "]"


def _category(record: Record, taxonomy: Taxonomy) -> str | None:
    """The row's category when it is exactly one known category, else ``None`` (applicability then unknown)."""
    if taxonomy.category_attribute is None:
        return None
    vals = record.labels.get(taxonomy.category_attribute, ())
    return vals[0] if len(vals) == 1 and vals[0] in taxonomy.categories else None


def _check_columns(manifest: Manifest, taxonomy: Taxonomy) -> list[ValidationProblem]:
    out = []
    header_line = manifest.path is None or manifest.path.suffix.lower() != ".jsonl"
    for col in manifest.attributes:
        if col in taxonomy:
            continue
        # JSONL has no header: point at the first row that uses the column
        line = 1
        if not header_line:
            line = next((r.line for r in manifest.records if col in r.labels), 1)
        out.append(
            ValidationProblem(
                manifest.source,
                line,
                col,
                f"unknown attribute column; expected one of {taxonomy.names}, a reserved column "
                f"(id, image, group, split, title) or meta_<name> for free text",
                "unknown-column",
            )
        )
    return out


def _check_labels(manifest: Manifest, taxonomy: Taxonomy) -> list[ValidationProblem]:
    out = []
    src = manifest.source
    cat_attr = taxonomy.category_attribute
    allowed = {a.name: frozenset(a.values) for a in taxonomy}
    for r in manifest.records:
        category = _category(r, taxonomy)
        for name, values in r.labels.items():
            if name not in taxonomy:
                continue  # reported once per column
            attr = taxonomy[name]
            unknown = [v for v in values if v not in allowed[name]]
            for v in unknown:
                kind = "unknown-category" if name == cat_attr else "unknown-value"
                what = "category" if name == cat_attr else "value"
                msg = f"unknown {what} {v!r}; expected one of {_fmt_values(attr.values)}"
                out.append(ValidationProblem(src, r.line, name, msg, kind))
            if attr.kind == "single" and len(values) > 1:
                msg = f"several values {list(values)} in a single-label attribute; expected exactly one"
                out.append(ValidationProblem(src, r.line, name, msg, "multiple-values"))
            if name != cat_attr and category is not None and not attr.applies(category):
                msg = (
                    f"value given, but the attribute does not apply to category {category!r}; "
                    f"expected empty (applies to {_fmt_values(attr.applies_to or ())})"
                )
                out.append(ValidationProblem(src, r.line, name, msg, "not-applicable"))
    return out


def _check_ids(manifest: Manifest) -> list[ValidationProblem]:
    lines: dict[str, list[int]] = defaultdict(list)
    for r in manifest.records:
        lines[r.id].append(r.line)
    out = []
    for rid, where in lines.items():
        if len(where) < 2:
            continue
        for line in where:
            others = ", ".join(str(x) for x in where if x != line)
            msg = f"duplicate id {rid!r} (also on line {others}); expected a unique id per row"
            out.append(ValidationProblem(manifest.source, line, "id", msg, "duplicate-id"))
    return out


def _check_groups(manifest: Manifest) -> list[ValidationProblem]:
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in manifest.records:
        if r.group and r.split:
            groups[r.group].append(r)
    out = []
    for g, rows in groups.items():
        counts = Counter(r.split for r in rows)
        if len(counts) < 2:
            continue
        # keep the split holding most of the group (first seen on a tie); flag the rows elsewhere
        main = counts.most_common(1)[0][0]
        summary = ", ".join(f"{s}: {n}" for s, n in counts.items())
        for r in rows:
            if r.split != main:
                msg = (
                    f"group {g!r} spans several splits ({summary}); expected one split per group "
                    f"({main!r} holds most of its rows)"
                )
                out.append(ValidationProblem(manifest.source, r.line, "split", msg, "group-split"))
    return out


def _image_problem(path: Path, max_pixels: int) -> tuple[str, str] | None:
    """``(kind, reason)`` for an unusable image, else ``None``."""
    try:
        found = path.is_file()
    except OSError as e:  # a name the OS refuses (too long): no file can be there
        return "missing-image", f"image path {str(path)[:80]!r}... cannot name a file ({e.strerror})"
    if not found:
        return "missing-image", f"image file {str(path)!r} not found; expected a path relative to the manifest"
    error = check_image(path, max_pixels=max_pixels)
    if error is None:
        return None
    if isinstance(error, ImageTooLarge):
        return "image-too-large", f"{error.reason} (raise --max-pixels if the image is genuine)"
    return "bad-image", f"{error.reason}; expected a complete JPEG, PNG or WebP file"


def _check_root(manifest: Manifest, root: str | os.PathLike[str]) -> tuple[list[ValidationProblem], set[int]]:
    """``outside-root`` problems (and ``bad-image`` for what is not a file), and the records not to open."""
    if not Path(root).is_dir():
        raise VestisError(f"{root}: root: expected an existing folder")
    out: list[ValidationProblem] = []
    refused: set[int] = set()
    for r in manifest.records:
        try:
            confined_image_path(manifest, r, root)
        except UnsafePath as e:
            if e.kind == "outside":
                msg, kind = f"{e.detail}; expected an image inside --root", "outside-root"
            else:
                msg, kind = f"{e.detail}; expected an image file", "bad-image"
            out.append(ValidationProblem(manifest.source, r.line, "image", msg, kind))
            refused.add(id(r))
    return out, refused


def _check_images(
    manifest: Manifest,
    max_pixels: int,
    workers: int | None,
    progress: ProgressFn | None,
    refused: Container[int] = frozenset(),
) -> list[ValidationProblem]:
    # several rows may share one file: decode each file once
    by_path: dict[Path, list[Record]] = defaultdict(list)
    for r in manifest.records:
        if id(r) not in refused:  # outside the root: never opened
            by_path[manifest.image_path(r)].append(r)
    paths = list(by_path)
    total = len(paths)
    if progress is not None:
        progress(0, total)
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    results: dict[Path, tuple[str, str] | None] = {}
    # decoding releases the GIL, so threads overlap both file reads and decoding
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, (path, res) in enumerate(
            zip(paths, pool.map(lambda p: _image_problem(p, max_pixels), paths), strict=True), start=1
        ):
            results[path] = res
            if progress is not None:
                progress(done, total)
    out = []
    for path, rows in by_path.items():
        res = results[path]
        if res is None:
            continue
        kind, msg = res
        out.extend(ValidationProblem(manifest.source, r.line, "image", msg, kind) for r in rows)
    return out


def validate_manifest(
    manifest: Manifest,
    taxonomy: Taxonomy,
    *,
    check_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    root: str | os.PathLike[str] | None = None,
) -> list[Problem]:
    """Every problem of ``manifest`` against ``taxonomy``, sorted by line.

    Args:
        manifest: a manifest from :func:`~vestis.data.manifest.read_manifest`; its parse problems are included.
        taxonomy: the taxonomy the labels must follow.
        check_images: decode every image file (in parallel) to find missing, broken and oversized ones.
        max_pixels: images with more pixels than this are reported (checked from the header).
        workers: threads for the image checks (default: a few more than the CPU count, at most 8).
        progress: called as ``progress(done, total)`` while images are checked.
        root: when given, every image must resolve inside this folder (:func:`confined_image_path`); the
            others are ``outside-root`` problems and are not opened. Checked even without ``check_images``.

    Returns:
        The problems; :func:`problem_kind` gives the kind of each.
    """
    problems: list[Problem] = list(manifest.problems)
    problems += _check_columns(manifest, taxonomy)
    problems += _check_labels(manifest, taxonomy)
    problems += _check_ids(manifest)
    problems += _check_groups(manifest)
    refused: set[int] = set()
    if root is not None:
        outside, refused = _check_root(manifest, root)
        problems += outside
    if check_images:
        problems += _check_images(manifest, max_pixels, workers, progress, refused)
    # stable sort: the problems of one line stay in check order
    return sorted(problems, key=lambda p: p.line)


def validate_file(
    path: str | os.PathLike[str],
    taxonomy_path: str | os.PathLike[str] | None = None,
    *,
    check_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    root: str | os.PathLike[str] | None = None,
) -> tuple[Manifest, Taxonomy, list[Problem]]:
    """Read a manifest and its taxonomy (default: ``taxonomy.yaml`` beside it) and validate them.

    See :func:`validate_manifest` for the arguments.
    """
    manifest, taxonomy = load_catalog(path, taxonomy_path)
    problems = validate_manifest(
        manifest,
        taxonomy,
        check_images=check_images,
        max_pixels=max_pixels,
        workers=workers,
        progress=progress,
        root=root,
    )
    return manifest, taxonomy, problems


def summarize(problems: Iterable[Problem]) -> dict[str, int]:
    """Problem count per kind, in :data:`KINDS` order."""
    counts = Counter(problem_kind(p) for p in problems)
    return {k: counts[k] for k in KINDS if counts[k]}


def _listing(problems: Sequence[Problem]) -> str:
    lines = [f"  {p}" for p in problems[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        lines.append(f"  ... and {len(problems) - _MAX_LISTED} more (run `vestis validate` for the full list)")
    return "\n".join(lines)


def clean_catalog(
    manifest: Manifest,
    taxonomy: Taxonomy,
    problems: Sequence[Problem],
    *,
    skip_invalid: bool,
    skipped_path: str | os.PathLike[str] | None,
) -> Manifest:
    """The rows of ``manifest`` that a training run may use.

    Args:
        manifest: the manifest that ``problems`` were found in.
        taxonomy: its taxonomy (part of the signature so callers pass the pair they validated).
        problems: from :func:`validate_manifest`.
        skip_invalid: drop the rows with problems instead of refusing to go on.
        skipped_path: where to write the skipped rows as CSV (``id,line,reasons``); ``None`` only logs them.

    Returns:
        ``manifest`` itself when there are no problems, else a manifest of the rows without problems.

    Raises:
        VestisError: there are problems and ``skip_invalid`` is false, or a problem concerns the whole file
            (an unknown column), which skipping rows cannot fix.
    """
    del taxonomy  # every check that needs it is already in ``problems``
    if not problems:
        return manifest
    src = manifest.source
    file_level = [p for p in problems if problem_kind(p) in _FILE_KINDS]
    if file_level:
        raise VestisError(
            f"{src}: {len(file_level)} problem(s) concern the whole file; fix the header or the taxonomy "
            f"(--skip-invalid skips rows, not columns):\n{_listing(file_level)}"
        )
    if not skip_invalid:
        raise VestisError(
            f"{src}: {len(problems)} problem(s) in the catalog:\n{_listing(problems)}\n"
            "fix them, or pass --skip-invalid to use only the valid rows (the skipped rows are listed in a CSV file)"
        )
    lines = [r.line for r in manifest.records]
    if len(set(lines)) != len(lines):
        # problems point at rows by line: without distinct lines one problem would drop unrelated rows
        raise VestisError(
            f"{src}: the rows do not carry distinct line numbers, so invalid rows cannot be told apart; "
            "write the manifest to a file and read it back before skipping invalid rows"
        )
    reasons: dict[int, list[str]] = defaultdict(list)
    for p in problems:
        reasons[p.line].append(f"{p.field}: {p.message}")
    kept = [r for r in manifest.records if r.line not in reasons]
    ids = {r.line: r.id for r in manifest.records}
    # rows the reader could not parse (no id, wrong field count) have a line but no record: listed with an empty id
    skipped = [(ids.get(line, ""), line, "; ".join(rs)) for line, rs in sorted(reasons.items())]
    if not kept:
        raise VestisError(f"{src}: every row has a problem; nothing left to use:\n{_listing(problems)}")
    where = ""
    if skipped_path is not None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "line", "reasons"])
        w.writerows(skipped)
        atomic_write_text(skipped_path, buf.getvalue())
        where = f"; listed in {skipped_path}"
    log.warning("%s: skipped %d invalid row(s), kept %d%s", src, len(skipped), len(kept), where)
    return manifest.subset(kept)
