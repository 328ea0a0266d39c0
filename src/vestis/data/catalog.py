"""A catalog = a manifest plus its taxonomy; the taxonomy defaults to ``taxonomy.yaml`` beside the manifest.

A manifest may point anywhere (``../..``, absolute paths, symlinks): code that opens catalog images on
someone else's behalf (the service's catalog features, such as thumbnails for substitute search, and
``vestis validate --root``) resolves them with :func:`confined_image_path`, never with
:meth:`Manifest.image_path` alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from vestis.data.manifest import Manifest, Record, read_manifest
from vestis.data.paths import UnsafePath, confine
from vestis.data.taxonomy import Taxonomy, load_taxonomy
from vestis.errors import VestisError

__all__ = ["UnsafePath", "confined_image_path", "load_catalog", "resolve_taxonomy_path"]

TAXONOMY_FILENAME = "taxonomy.yaml"


def resolve_taxonomy_path(manifest: str | os.PathLike[str], taxonomy: str | os.PathLike[str] | None = None) -> Path:
    """``taxonomy`` when given, else ``taxonomy.yaml`` in the manifest's folder."""
    if taxonomy is not None:
        return Path(taxonomy)
    path = Path(manifest).parent / TAXONOMY_FILENAME
    if not path.is_file():
        raise VestisError(
            f"{manifest}: no taxonomy given and no {TAXONOMY_FILENAME} beside the manifest; pass --taxonomy"
        )
    return path


def load_catalog(
    manifest: str | os.PathLike[str], taxonomy: str | os.PathLike[str] | None = None
) -> tuple[Manifest, Taxonomy]:
    """Read a manifest and its taxonomy (no validation beyond parsing; see ``vestis.data.validate``)."""
    tax = load_taxonomy(resolve_taxonomy_path(manifest, taxonomy))
    return read_manifest(manifest), tax


def confined_image_path(manifest: Manifest, record: Record, root: str | os.PathLike[str]) -> Path:
    """The real path of ``record``'s image, refusing one outside ``root``.

    The path is resolved (``..``, symlinks) and must lie inside the resolved ``root``, whether the manifest
    wrote it relative, with ``..`` or absolute. This is the function the service's catalog features must open
    catalog images through.

    Args:
        manifest: the manifest holding ``record`` (relative paths are relative to its folder).
        record: the row.
        root: the folder every image must stay in (itself may be a symlink).

    Returns:
        The resolved path, to open as it is (resolving again could follow a link changed in between).

    Raises:
        UnsafePath: ``outside`` (the image lies outside ``root``) or ``not-a-file`` (it exists but is a folder,
            a FIFO, a device...). A missing file is not an error here.
    """
    return confine(manifest.image_path(record), root)
