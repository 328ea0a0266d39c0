"""The simplest custom catalog: ``root/<attribute>/<value>/<image>``.

Every image under ``root/<attribute>/<value>/`` gets ``value`` for ``attribute``. The same file name under
several folders is the same item: its labels are merged into one row (the image is the first path in
sorted order), counted as ``merged with an earlier row (same file name)``.

Taxonomy (``name`` = the root folder's name): one attribute per folder, values = its sub-folders in sorted
order. An attribute is single-label unless an item sits under two of its values, or it has only one value
(a presence flag): then it is multi-label. A folder named ``category`` becomes the category attribute
when it is single-label. Rows have ``id`` = the file name without its extension.

Files that are not images (by extension) and files outside a value folder are ignored and counted in
``details.ignored_files``; hidden files and folders (``.name``) are not read. An image that is a symlink
leading outside ``root`` (directly or through a symlinked folder) is skipped as ``outside the source``
unless ``follow_symlinks``; one that is not a regular file as ``not a regular file``.
"""

from __future__ import annotations

from pathlib import Path

from vestis.data.importers._common import (
    IMPORTERS,
    SKIP_DUPLICATE,
    SKIP_NO_IMAGE,
    ImportContext,
    Imported,
    UnsafePath,
)
from vestis.data.manifest import RESERVED, Record
from vestis.data.taxonomy import Attribute
from vestis.errors import VestisError

__all__ = ["IMAGE_SUFFIXES", "read_folders"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
MERGED = "merged with an earlier row (same file name)"


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _check_name(name: str, path: Path, what: str) -> None:
    if name != name.strip() or "|" in name or not name:
        raise VestisError(f"{path}: {what} {name!r}: expected a name without surrounding spaces or '|'")


@IMPORTERS.register("folders", crop=False)
def read_folders(src: Path, ctx: ImportContext) -> Imported:
    """Read the ``attribute/value/image`` tree under ``src``.

    Args:
        src: the root folder.
        ctx: import context.
    """
    if not src.is_dir():
        raise VestisError(f"{src}: expected a folder of <attribute>/<value>/ image folders")
    report = ctx.report
    rows: dict[str, Record] = {}
    names: dict[str, str] = {}  # id -> file name, to tell two files with one stem apart
    values: dict[str, list[str]] = {}
    multi: set[str] = set()
    ignored = 0
    for attr_dir in sorted(p for p in src.iterdir() if _visible(p)):
        if not attr_dir.is_dir():
            ignored += 1
            continue
        attr = attr_dir.name
        _check_name(attr, attr_dir, "attribute")
        if attr in RESERVED or attr.startswith("meta_"):
            raise VestisError(f"{attr_dir}: attribute {attr!r} is a reserved manifest column; rename the folder")
        values[attr] = []
        for value_dir in sorted(p for p in attr_dir.iterdir() if _visible(p)):
            if not value_dir.is_dir():
                ignored += 1
                continue
            value = value_dir.name
            _check_name(value, value_dir, "value")
            values[attr].append(value)
            for path in sorted(p for p in value_dir.iterdir() if _visible(p)):
                if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                    ignored += 1
                    continue
                report.rows_read += 1
                rel = path.relative_to(src).as_posix()
                try:
                    # a symlinked file or value folder must not lead outside the tree (/etc/passwd as a.jpg)
                    found = ctx.find(rel, src)
                    if found is None:  # removed since the folder was listed
                        report.skip(SKIP_NO_IMAGE, f"{rel}: not found")
                        continue
                except UnsafePath as e:
                    ctx.skip_unsafe(e, rel)
                    continue
                rid = path.stem
                record = rows.get(rid)
                if record is None:
                    rows[rid] = Record(id=rid, image=ctx.image(found, rel), labels={attr: (value,)})
                    names[rid] = path.name
                    continue
                if names[rid] != path.name:
                    report.skip(SKIP_DUPLICATE, f"{rel}: id {rid!r} already used by {names[rid]}")
                    continue
                have = record.labels.get(attr, ())
                if have and value not in have:
                    multi.add(attr)
                if value not in have:
                    record.labels[attr] = (*have, value)
                report.skip(MERGED, rel)
    report.details["ignored_files"] = ignored
    attributes = []
    for attr, vals in values.items():
        if not vals:
            report.removed_attributes[attr] = "no value folder"
            continue
        kind = "multi" if attr in multi or len(vals) == 1 else "single"
        attributes.append(Attribute(attr, kind, tuple(vals)))
    category = next((a.name for a in attributes if a.name == "category" and a.kind == "single"), None)
    return Imported(records=list(rows.values()), attributes=attributes, category_attribute=category, name=src.name)
