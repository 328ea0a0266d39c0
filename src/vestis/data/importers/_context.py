"""What an importer works with: the report it fills, what it returns, and the context that finds and copies images.

Confinement. Every id and path an importer takes from the data goes through :meth:`ImportContext.find` /
:meth:`ImportContext.check_name`: an absolute path, a ``..`` or an id that is not a plain name is a skipped row
(``unsafe path``), as is a file whose symlinks lead outside the folder it was looked up in (``outside the
source``, unless ``follow_symlinks``) or that is not a regular file (``not a regular file``: a FIFO or a
device would hang or never end a copy). Copies and crops are written only under ``out/images``.
"""

from __future__ import annotations

import math
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vestis.data.images import ImageError, image_size, load_image
from vestis.data.manifest import Record
from vestis.data.paths import UnsafePath, confine, is_within, name_problem, relative_problem
from vestis.data.taxonomy import Attribute
from vestis.errors import VestisError
from vestis.io import atomic_write

__all__ = [
    "IMAGES_DIRNAME",
    "SKIP_DUPLICATE",
    "SKIP_NOT_REGULAR",
    "SKIP_NO_IMAGE",
    "SKIP_OUTSIDE_SOURCE",
    "SKIP_UNKNOWN_VALUE",
    "SKIP_UNPARSEABLE",
    "SKIP_UNSAFE_PATH",
    "ImportContext",
    "ImportReport",
    "Imported",
    "UnsafePath",
]

IMAGES_DIRNAME = "images"

# Skip reasons shared by several formats (a format may add its own).
SKIP_NO_IMAGE = "no image"
SKIP_UNPARSEABLE = "unparseable line"
SKIP_UNKNOWN_VALUE = "unknown value"
SKIP_DUPLICATE = "duplicate id"
SKIP_UNSAFE_PATH = "unsafe path"
SKIP_OUTSIDE_SOURCE = "outside the source"
SKIP_NOT_REGULAR = "not a regular file"
_UNSAFE_REASONS = {"unsafe-name": SKIP_UNSAFE_PATH, "outside": SKIP_OUTSIDE_SOURCE, "not-a-file": SKIP_NOT_REGULAR}

_MAX_EXAMPLES = 5


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


_REGULAR, _LINK, _OTHER = "regular", "link", "other"


class _DirIndex:
    """What each name in a folder is, from one listing per folder (one ``stat`` per file is slow on big sets).

    The kinds come from ``scandir`` without following links: a regular file, a symlink, or anything else.
    """

    def __init__(self) -> None:
        self._kinds: dict[str, dict[str, str]] = {}
        self._real: dict[str, str] = {}

    def listing(self, folder: Path) -> dict[str, str]:
        key = os.fspath(folder)
        kinds = self._kinds.get(key)
        if kinds is None:
            kinds = {}
            try:
                with os.scandir(folder) as it:
                    for e in it:
                        if e.is_symlink():
                            kinds[e.name] = _LINK
                        else:
                            kinds[e.name] = _REGULAR if e.is_file(follow_symlinks=False) else _OTHER
            except OSError:
                pass
            self._kinds[key] = kinds
        return kinds

    def kind(self, path: Path) -> str | None:
        """``regular``, ``link``, ``other`` or ``None`` when there is no such name."""
        return self.listing(path.parent).get(path.name)

    def real(self, folder: Path) -> str:
        """The real path of ``folder``, resolved once."""
        key = os.fspath(folder)
        real = self._real.get(key)
        if real is None:
            real = self._real[key] = os.path.realpath(folder)
        return real


class ImportContext:
    """Options and services an importer uses: image references, copies, crops, the report.

    Args:
        fmt: format name (for messages).
        src: the dataset folder or file.
        out: the output folder.
        copy: copy images under ``out/images`` instead of referencing them where they are.
        crop: the importer should write crops (only formats registered with ``crop=True``).
        report: the report being filled.
        follow_symlinks: accept files whose symlinks lead outside the folder they are looked up in.
    """

    def __init__(
        self,
        fmt: str,
        src: Path,
        out: Path,
        *,
        copy: bool,
        crop: bool,
        report: ImportReport,
        follow_symlinks: bool = False,
    ) -> None:
        self.format = fmt
        self.src = src
        self.out = out
        self.copy = copy
        self.crop = crop
        self.report = report
        self.follow_symlinks = follow_symlinks
        self.files = _DirIndex()
        self._out_abs = os.path.abspath(out)

    def check_name(self, name: str, what: str = "id") -> None:
        """Refuse an id from the data that becomes a file name but is not a plain name (``../../secret/s``).

        Raises:
            UnsafePath: ``unsafe-name``; :meth:`skip_unsafe` reports it.
        """
        why = name_problem(name)
        if why is not None:
            raise UnsafePath("unsafe-name", f"{what} {name!r}: {why}")

    def find(self, name: str, *bases: Path) -> Path | None:
        """The file ``name`` (a relative path from the data) in the first of ``bases`` holding it, else ``None``.

        Only directory listings are read; a real path is resolved only for symlinks and sub-folders.

        Raises:
            UnsafePath: ``name`` is absolute or has ``..`` (``unsafe-name``); the file found leads outside its
                base through a symlink (``outside``, unless ``follow_symlinks``) or is not a regular file
                (``not-a-file``). :meth:`skip_unsafe` reports it.
        """
        why = relative_problem(name)
        if why is not None:
            raise UnsafePath("unsafe-name", f"{name!r}: {why}")
        for base in bases:
            path = base / name
            kind = self.files.kind(path)
            if kind is None:
                continue
            self._confine(path, base, kind)
            return path
        return None

    def _confine(self, path: Path, base: Path, kind: str) -> None:
        if not self.follow_symlinks:
            real_base = self.files.real(base)
            # a sub-folder of the base may itself be a symlink that leads out
            if path.parent != base and not is_within(self.files.real(path.parent), real_base):
                confine(path, real_base)  # raises with the resolved path in the message
            if kind == _LINK:
                confine(path, real_base)
        if kind == _OTHER or (kind == _LINK and not _is_regular(path)):
            raise UnsafePath("not-a-file", f"{path.name!r} is not a regular file")

    def skip_unsafe(self, error: UnsafePath, where: str) -> None:
        """Count the row refused by ``error`` as skipped, with the reason for its kind."""
        self.report.skip(_UNSAFE_REASONS[error.kind], f"{where}: {error.detail}")

    def _target(self, dest: str) -> Path:
        """``out/images/dest``, refusing a ``dest`` that would lead outside ``out/images``."""
        why = relative_problem(dest)
        if why is not None:
            raise UnsafePath("unsafe-name", f"output name {dest!r}: {why}")
        images = self.out / IMAGES_DIRNAME
        target = images / dest
        try:
            # the file itself is replaced atomically (a link there is replaced, not followed): check its folder
            confine(target.parent, images, regular=False)
        except UnsafePath as e:
            raise VestisError(f"{self.out}: refusing to write outside the output folder: {e.detail}") from None
        return target

    def ref(self, path: Path) -> str:
        """``path`` as the manifest writes it: relative to the output folder (absolute across drives)."""
        absolute = os.path.abspath(path)
        try:
            rel = os.path.relpath(absolute, self._out_abs)
        except ValueError:  # another drive on Windows: no relative path exists
            return Path(absolute).as_posix()
        return Path(rel).as_posix()

    def image(self, path: Path, dest: str) -> str:
        """The manifest path of image ``path``; with ``copy``, the file is first copied to ``out/images/dest``.

        Raises:
            UnsafePath: ``dest`` is not a relative path of plain names.
            VestisError: a folder under ``out/images`` is a symlink leading out of it.
        """
        if not self.copy:
            return self.ref(path)
        target = self._target(dest)
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
            UnsafePath: ``dest`` is not a relative path of plain names.
        """
        target = self._target(dest)
        img = load_image(path)
        w, h = img.size
        x1, y1 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
        x2, y2 = min(w, math.ceil(box[2])), min(h, math.ceil(box[3]))
        if x2 <= x1 or y2 <= y1:
            return None
        crop = img.crop((x1, y1, x2, y2))
        fmt = {".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}.get(target.suffix.lower(), "JPEG")
        kw: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        atomic_write(target, lambda f: crop.save(f, format=fmt, **kw))
        return self.ref(target), crop.size

    def image_size(self, path: Path) -> tuple[int, int] | None:
        """Upright ``(width, height)`` from the image header (no pixel decoded), or ``None`` when unreadable."""
        try:
            return image_size(path)
        except ImageError:
            return None


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
