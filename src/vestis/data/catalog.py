"""A catalog = a manifest plus its taxonomy; the taxonomy defaults to ``taxonomy.yaml`` beside the manifest."""

from __future__ import annotations

import os
from pathlib import Path

from vestis.data.manifest import Manifest, read_manifest
from vestis.data.taxonomy import Taxonomy, load_taxonomy
from vestis.errors import VestisError

__all__ = ["load_catalog", "resolve_taxonomy_path"]

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
