"""What every importer shares: the report, the import context (image references, copies, crops) and finalisation.

An importer reads one public dataset layout and returns an :class:`Imported` (records + attribute
definitions); :func:`finalize` folds rare values, builds and validates the :class:`Taxonomy`, and writes
``manifest.csv``, ``taxonomy.yaml``, an optional ``coco.json`` and ``import_report.json``.

The report, the context and the skip reasons live in :mod:`._context` and are re-exported here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from vestis.data.importers._context import (
    IMAGES_DIRNAME,
    SKIP_DUPLICATE,
    SKIP_NO_IMAGE,
    SKIP_NOT_REGULAR,
    SKIP_OUTSIDE_SOURCE,
    SKIP_UNKNOWN_VALUE,
    SKIP_UNPARSEABLE,
    SKIP_UNSAFE_PATH,
    ImportContext,
    Imported,
    ImportReport,
    UnsafePath,
)
from vestis.data.manifest import Manifest, Record, write_manifest
from vestis.data.taxonomy import Attribute, Taxonomy, save_taxonomy
from vestis.errors import VestisError
from vestis.io import atomic_write_text
from vestis.registry import Registry

__all__ = [
    "COCO_FILENAME",
    "IMAGES_DIRNAME",
    "IMPORTERS",
    "MANIFEST_FILENAME",
    "OTHER",
    "REPORT_FILENAME",
    "SKIP_DUPLICATE",
    "SKIP_NOT_REGULAR",
    "SKIP_NO_IMAGE",
    "SKIP_OUTSIDE_SOURCE",
    "SKIP_UNKNOWN_VALUE",
    "SKIP_UNPARSEABLE",
    "SKIP_UNSAFE_PATH",
    "TAXONOMY_FILENAME",
    "ImportContext",
    "ImportReport",
    "Imported",
    "UnsafePath",
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
OTHER = "other"

Rare = Literal["other", "drop"]


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
