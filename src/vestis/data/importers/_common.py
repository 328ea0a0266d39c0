"""What every importer shares: the report, the import context (image references, copies, crops) and finalisation.

An importer reads one public dataset layout and returns an :class:`Imported` (records + attribute
definitions); :func:`finalize` folds rare values, builds and validates the :class:`Taxonomy`, and writes
``manifest.csv``, ``taxonomy.yaml``, an optional ``coco.json`` and ``import_report.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from vestis.data.images import load_image
from vestis.data.manifest import Manifest, Record, write_manifest
from vestis.data.taxonomy import Attribute, Taxonomy, save_taxonomy
from vestis.errors import VestisError
from vestis.io import atomic_write, atomic_write_text
from vestis.registry import Registry

__all__ = [
    "COCO_FILENAME",
    "IMAGES_DIRNAME",
    "IMPORTERS",
    "MANIFEST_FILENAME",
    "OTHER",
    "REPORT_FILENAME",
    "SKIP_DUPLICATE",
    "SKIP_NO_IMAGE",
    "SKIP_UNKNOWN_VALUE",
    "SKIP_UNPARSEABLE",
    "TAXONOMY_FILENAME",
    "ImportContext",
    "ImportReport",
    "Imported",
    "clean_value",
    "finalize",
    "load_json",
    "require_file",
    "slug",
]

IMPORTERS = Registry("import format")
"""Format name -> reader ``(src, ctx, **options) -> Imported``; metadata ``crop=True`` where ``--crop`` works."""

MANIFEST_FILENAME = "manifest.csv"
TAXONOMY_FILENAME = "taxonomy.yaml"
REPORT_FILENAME = "import_report.json"
COCO_FILENAME = "coco.json"
IMAGES_DIRNAME = "images"
OTHER = "other"

# Skip reasons shared by several formats (a format may add its own).
SKIP_NO_IMAGE = "no image"
SKIP_UNPARSEABLE = "unparseable line"
SKIP_UNKNOWN_VALUE = "unknown value"
SKIP_DUPLICATE = "duplicate id"

_MAX_EXAMPLES = 5

Rare = Literal["other", "drop"]


@dataclass
class ImportReport:
    """What an import read, wrote and left out, and why.

    Invariant: ``rows_read == rows_written + rows_skipped``.

    Attributes:
        format: the importer's name.
        source: the dataset folder or file given.
        out: the output folder.
        rows_read: input rows (lines, annotation files, images) that describe one manifest row each.
        rows_written: rows in ``manifest.csv``.
        skipped: skip reason -> number of input rows left out for it.
        examples: skip reason -> the first few places (``file:line: detail``) that were skipped.
        labels_dropped: ``attribute: reason`` -> labels removed from rows that were kept (the cell is then missing).
        folded: attribute -> rare values folded into ``other`` or dropped, with their counts.
        removed_attributes: attribute -> why it is not in the taxonomy (e.g. a single value left).
        details: format-specific facts (missing image numbers, hierarchy conflicts, ...).
        files: the files written, relative to ``out``.
    """

    format: str
    source: str
    out: str
    rows_read: int = 0
    rows_written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    labels_dropped: dict[str, int] = field(default_factory=dict)
    folded: dict[str, dict[str, int]] = field(default_factory=dict)
    removed_attributes: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, where: str | None = None) -> None:
        """Count one input row left out for ``reason``; ``where`` (``file:line: detail``) is kept as an example."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if where is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < _MAX_EXAMPLES:
                ex.append(where)

    def drop_label(self, attribute: str, reason: str, n: int = 1) -> None:
        """Count ``n`` labels of ``attribute`` removed from kept rows for ``reason``."""
        key = f"{attribute}: {reason}"
        self.labels_dropped[key] = self.labels_dropped.get(key, 0) + n

    def to_dict(self) -> dict[str, Any]:
        """The report as written to ``import_report.json``."""
        return {
            "format": self.format,
            "source": self.source,
            "out": self.out,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_skipped": self.rows_skipped,
            "skipped": dict(self.skipped),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "labels_dropped": dict(self.labels_dropped),
            "folded": {k: dict(v) for k, v in self.folded.items()},
            "removed_attributes": dict(self.removed_attributes),
            "details": self.details,
            "files": list(self.files),
        }

    def summary(self) -> str:
        """A few human-readable lines: counts, each skip reason with an example, folded values."""
        lines = [
            f"imported {self.format} from {self.source} into {self.out}",
            f"rows read: {self.rows_read:,}",
            f"rows written: {self.rows_written:,}",
            f"rows skipped: {self.rows_skipped:,}",
        ]
        for reason, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            ex = self.examples.get(reason)
            lines.append(f"  {reason}: {n:,}" + (f" (e.g. {ex[0]})" if ex else ""))
        if self.labels_dropped:
            lines.append(f"labels dropped (row kept, label missing): {sum(self.labels_dropped.values()):,}")
            lines += [f"  {k}: {n:,}" for k, n in sorted(self.labels_dropped.items())]
        for attr, values in self.folded.items():
            lines.append(f"rare values of {attr}: {len(values)} ({sum(values.values()):,} labels)")
        for attr, why in self.removed_attributes.items():
            lines.append(f"attribute {attr} left out of the taxonomy: {why}")
        lines.append("files: " + ", ".join(self.files))
        return "\n".join(lines)


@dataclass
class Imported:
    """What an importer read: rows and the attribute definitions, before rare values are folded.

    Attributes:
        records: manifest rows (image paths already relative to the output folder).
        attributes: attribute definitions in output order; values may include some without examples.
        category_attribute: name of the attribute whose values are the categories.
        hierarchy: object type -> categories.
        metadata: free-text ``meta_<name>`` columns.
        name: taxonomy name.
        coco: a COCO detection file to write beside the manifest (image ``file_name`` relative to it).
    """

    records: list[Record]
    attributes: list[Attribute]
    category_attribute: str | None = None
    hierarchy: dict[str, list[str]] = field(default_factory=dict)
    metadata: list[str] = field(default_factory=list)
    name: str = ""
    coco: dict[str, Any] | None = None


class _DirIndex:
    """File-existence checks from one directory listing per folder (one ``stat`` per file is slow on big sets)."""

    def __init__(self) -> None:
        self._files: dict[str, frozenset[str]] = {}

    def listing(self, folder: Path) -> frozenset[str]:
        key = os.fspath(folder)
        names = self._files.get(key)
        if names is None:
            try:
                with os.scandir(folder) as it:
                    names = frozenset(e.name for e in it if e.is_file())
            except OSError:
                names = frozenset()
            self._files[key] = names
        return names

    def exists(self, path: Path) -> bool:
        return path.name in self.listing(path.parent)


class ImportContext:
    """Options and services an importer uses: image references, copies, crops, the report.

    Args:
        fmt: format name (for messages).
        src: the dataset folder or file.
        out: the output folder.
        copy: copy images under ``out/images`` instead of referencing them where they are.
        crop: the importer should write crops (only formats registered with ``crop=True``).
        report: the report being filled.
    """

    def __init__(self, fmt: str, src: Path, out: Path, *, copy: bool, crop: bool, report: ImportReport) -> None:
        self.format = fmt
        self.src = src
        self.out = out
        self.copy = copy
        self.crop = crop
        self.report = report
        self.files = _DirIndex()
        self._out_abs = os.path.abspath(out)

    def exists(self, path: Path) -> bool:
        """Whether the image file ``path`` exists (cached directory listings; no image is decoded)."""
        return self.files.exists(path)

    def ref(self, path: Path) -> str:
        """``path`` as the manifest writes it: relative to the output folder (absolute across drives)."""
        absolute = os.path.abspath(path)
        try:
            rel = os.path.relpath(absolute, self._out_abs)
        except ValueError:  # another drive on Windows: no relative path exists
            return Path(absolute).as_posix()
        return Path(rel).as_posix()

    def image(self, path: Path, dest: str) -> str:
        """The manifest path of image ``path``; with ``copy``, the file is first copied to ``out/images/dest``."""
        if not self.copy:
            return self.ref(path)
        target = self.out / IMAGES_DIRNAME / dest
        if os.path.abspath(target) != os.path.abspath(path):

            def _copy(f: Any) -> None:
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)

            atomic_write(target, _copy)
        return self.ref(target)

    def crop_image(self, path: Path, box: Sequence[float], dest: str) -> tuple[str, tuple[int, int]] | None:
        """Write the crop of ``path`` to the box ``(x1, y1, x2, y2)`` as ``out/images/dest``.

        The box is clamped to the image and widened to whole pixels.

        Returns:
            The manifest path of the crop and its ``(width, height)``, or ``None`` when the clamped box is empty.

        Raises:
            ImageError: the image cannot be decoded.
        """
        img = load_image(path)
        w, h = img.size
        x1, y1 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
        x2, y2 = min(w, math.ceil(box[2])), min(h, math.ceil(box[3]))
        if x2 <= x1 or y2 <= y1:
            return None
        crop = img.crop((x1, y1, x2, y2))
        target = self.out / IMAGES_DIRNAME / dest
        fmt = {".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}.get(target.suffix.lower(), "JPEG")
        kw: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        atomic_write(target, lambda f: crop.save(f, format=fmt, **kw))
        return self.ref(target), crop.size

    def image_size(self, path: Path) -> tuple[int, int] | None:
        """``(width, height)`` from the image header (no pixel decoded), or ``None`` when unreadable."""
        try:
            with Image.open(path) as img:
                return img.size
        except (OSError, UnidentifiedImageError, ValueError):
            return None


def clean_value(raw: str | None, *, na: Iterable[str] = ("", "NA")) -> str | None:
    """A stripped value, or ``None`` for an empty cell or a missing-value marker."""
    if raw is None:
        return None
    v = raw.strip()
    return None if v in na else v


def _fold(
    records: Sequence[Record],
    attributes: Sequence[Attribute],
    min_count: int,
    rare: Rare,
    report: ImportReport,
) -> dict[str, Attribute]:
    """Fold or drop values with fewer than ``min_count`` examples; returns the new attribute per name.

    Relabels ``records`` in place.
    """
    counts: dict[str, Counter[str]] = {a.name: Counter() for a in attributes}
    for r in records:
        for name, vals in r.labels.items():
            if name in counts:
                counts[name].update(vals)
    new: dict[str, Attribute] = {}
    mapping: dict[str, dict[str, str | None]] = {}
    for a in attributes:
        c = counts[a.name]
        low = [v for v in a.values if c[v] < min_count and v != OTHER]
        if not low:
            new[a.name] = a
            continue
        folded_labels = sum(c[v] for v in low)
        report.folded[a.name] = {v: c[v] for v in low}
        keep = [v for v in a.values if v not in set(low)]
        if rare == "other":
            # values without a single example vanish; "other" appears only when it holds something
            if folded_labels and OTHER not in keep:
                keep.append(OTHER)
            mapping[a.name] = dict.fromkeys(low, OTHER)
        else:
            mapping[a.name] = dict.fromkeys(low)
            if folded_labels:
                report.drop_label(a.name, f"rare value (< {min_count} examples) dropped", folded_labels)
        new[a.name] = Attribute(a.name, a.kind, tuple(keep), a.applies_to, a.roi, a.description)
    if mapping:
        for r in records:
            for name, m in mapping.items():
                vals = r.labels.get(name)
                if not vals:
                    continue
                out: list[str] = []
                for v in vals:
                    nv = m.get(v, v)
                    if nv is not None and nv not in out:
                        out.append(nv)
                if out:
                    r.labels[name] = tuple(out)
                else:
                    del r.labels[name]
    return new


def _check_values(records: Sequence[Record], attributes: Mapping[str, Attribute], report: ImportReport) -> None:
    """Drop (and count) labels whose value the attribute does not define: the manifest must validate."""
    allowed = {n: frozenset(a.values) for n, a in attributes.items()}
    for r in records:
        for name in list(r.labels):
            if name not in allowed:
                del r.labels[name]
                continue
            vals = r.labels[name]
            good = tuple(v for v in vals if v in allowed[name])
            if len(good) != len(vals):
                report.drop_label(name, "value not in the taxonomy", len(vals) - len(good))
            if attributes[name].kind == "single" and len(good) > 1:
                report.drop_label(name, "several values for a single-label attribute")
                good = ()
            if good:
                r.labels[name] = good
            else:
                del r.labels[name]


def _usable(a: Attribute) -> str | None:
    """Why ``a`` cannot be in a taxonomy, or ``None``."""
    if not a.values:
        return "no value left"
    if a.kind == "single" and len(a.values) < 2:
        return f"a single-label attribute needs two values, only {a.values[0]!r} is left"
    return None


def finalize(
    imported: Imported,
    ctx: ImportContext,
    *,
    min_count: int = 0,
    rare: Rare = "other",
) -> ImportReport:
    """Fold rare values, build and validate the taxonomy, and write every output file atomically.

    Args:
        imported: what the importer read.
        ctx: the import context (output folder and report).
        min_count: values with fewer examples than this are folded (``rare='other'``) or dropped.
        rare: ``other`` relabels rare values as ``other``; ``drop`` removes them (the label becomes missing).

    Returns:
        The completed report (also written as ``import_report.json``).
    """
    report = ctx.report
    records = imported.records
    attrs = {a.name: a for a in imported.attributes}
    for name, a in list(attrs.items()):
        # a value the taxonomy cannot hold (e.g. a "|" inside a free-text cell): its labels are dropped below
        bad = [v for v in a.values if not v.strip() or v != v.strip() or "|" in v]
        if bad:
            report.details.setdefault("invalid_values", {})[name] = bad
            attrs[name] = replace(a, values=tuple(v for v in a.values if v not in bad))
    if min_count > 0:
        attrs = _fold(records, list(attrs.values()), min_count, rare, report)
    for name, a in list(attrs.items()):
        why = _usable(a)
        if why is not None:
            report.removed_attributes[name] = why
            del attrs[name]
    if not attrs:
        why = "; ".join(f"{k}: {v}" for k, v in report.removed_attributes.items()) or "the format defines none"
        raise VestisError(f"{ctx.src}: no attribute left for the taxonomy ({why})")
    cat = imported.category_attribute if imported.category_attribute in attrs else None
    categories = set(attrs[cat].values) if cat else set()
    hierarchy: dict[str, tuple[str, ...]] = {}
    for parent, children in imported.hierarchy.items():
        kept = tuple(c for c in children if c in categories)
        if kept:
            hierarchy[parent] = kept
    final: list[Attribute] = []
    folded_categories = report.folded.get(cat, {}) if cat else {}
    for a in attrs.values():
        applies = a.applies_to
        if applies is not None and cat is None:
            applies = None
        elif applies is not None:
            kept = tuple(c for c in applies if c in categories)
            if OTHER in categories and OTHER not in kept and any(c in folded_categories for c in applies):
                kept += (OTHER,)  # the folded categories it applied to now read "other"
            if not kept:
                report.removed_attributes[a.name] = "it applies to no category left"
                continue
            applies = kept
        final.append(Attribute(a.name, a.kind, a.values, applies, a.roi, a.description))
    if not final:
        raise VestisError(f"{ctx.src}: no attribute left for the taxonomy ({report.removed_attributes})")
    attrs = {a.name: a for a in final}
    _check_values(records, attrs, report)
    taxonomy = Taxonomy(
        attributes=tuple(final),
        category_attribute=cat,
        hierarchy=hierarchy,
        metadata=tuple(imported.metadata),
        name=imported.name or ctx.format,
    )
    out = ctx.out
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(records=records, attributes=taxonomy.names, meta_columns=list(imported.metadata), root=out)
    write_manifest(manifest, out / MANIFEST_FILENAME)
    save_taxonomy(taxonomy, out / TAXONOMY_FILENAME)
    report.files = [MANIFEST_FILENAME, TAXONOMY_FILENAME]
    if imported.coco is not None:
        atomic_write_text(out / COCO_FILENAME, json.dumps(imported.coco, ensure_ascii=False) + "\n")
        report.files.append(COCO_FILENAME)
    if ctx.copy or ctx.crop:
        report.files.append(IMAGES_DIRNAME + "/")
    report.rows_written = len(records)
    report.files.append(REPORT_FILENAME)
    atomic_write_text(out / REPORT_FILENAME, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return report


def require_file(path: Path, what: str) -> Path:
    """``path`` when it is a file, else a :class:`VestisError` naming the expected layout."""
    if not path.is_file():
        raise VestisError(f"{path}: {what} not found")
    return path


def load_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise VestisError(f"{path}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise VestisError(f"{path}:{e.lineno}: json: not valid JSON ({e.msg}, column {e.colno})") from None


def slug(name: str) -> str:
    """``'neckline type'`` -> ``'neckline_type'``: a column-safe attribute name."""
    out = "".join(ch if ch.isalnum() else "_" for ch in name.strip().lower())
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")
