"""Import public fashion datasets (and simple custom layouts) into a vestis catalog.

``import_dataset(fmt, src, out)`` reads a dataset in its official layout and writes, in ``out``:

* ``manifest.csv``: one row per item; ``image`` is relative to ``out`` (images are referenced where
  they are unless ``copy=True``; ``crop=True`` writes crops to ``out/images`` for the formats that support it);
* ``taxonomy.yaml``: the attributes, their values, the category attribute and the object-type hierarchy;
* ``import_report.json``: rows read, written and skipped with the reason for each class of skip;
* ``coco.json`` for the detection formats (``deepfashion2``, ``coco``).

Formats (one module each; see the module docstrings for the taxonomy each one produces):

==========================  ======================================================================
``fashion-product``         Kaggle Fashion Product Images: ``styles.csv`` + ``images/<id>.jpg``
``clothing-attributes``     Chen et al. 2012: ``images/`` + ``labels/*_GT.mat``
``deepfashion-attributes``  DeepFashion Category and Attribute Prediction: ``Anno/``, ``Eval/``, ``img/``
``deepfashion2``            DeepFashion2: ``annos/<id>.json`` + ``image/<id>.jpg`` (per split)
``fashionai``               FashionAI attributes: ``Annotations/label.csv`` + ``Images/``
``imaterialist-2021``       iMaterialist-Fashion-2021 (Fashionpedia): ``instances_attributes_*2020.json``
``coco``                    any COCO detection JSON
``folders``                 ``root/<attribute>/<value>/*.jpg``
==========================  ======================================================================

Paths from the data stay inside the dataset: an id that is not a plain name, an image path with ``..`` or a
root, a symlink leading out of the folder the image is looked up in (``follow_symlinks=True`` accepts those)
and anything but a regular file become skipped rows with their reason; copies and crops are written only
under ``out/images``.

Rare values: ``min_count=N`` folds values with fewer than N examples into ``other`` (``rare='other'``)
or removes them from the taxonomy and their labels from the rows (``rare='drop'``). An attribute left
with too few values is left out of the taxonomy and named in the report.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from vestis.data.importers import (  # noqa: F401  (each module registers its format)
    clothing_attributes,
    coco,
    deepfashion,
    deepfashion2,
    fashion_product,
    fashionai,
    folders,
    imaterialist,
)
from vestis.data.importers._common import (
    COCO_FILENAME,
    IMPORTERS,
    MANIFEST_FILENAME,
    REPORT_FILENAME,
    TAXONOMY_FILENAME,
    ImportContext,
    ImportReport,
    finalize,
)
from vestis.errors import VestisError

__all__ = [
    "COCO_FILENAME",
    "FORMATS",
    "IMPORTERS",
    "MANIFEST_FILENAME",
    "REPORT_FILENAME",
    "TAXONOMY_FILENAME",
    "ImportReport",
    "format_options",
    "import_dataset",
]

FORMATS: tuple[str, ...] = tuple(IMPORTERS.names())
RARE_MODES = ("other", "drop")


def format_options(fmt: str) -> dict[str, Any]:
    """The format-specific keyword options of ``fmt`` with their defaults."""
    reader = IMPORTERS.get(fmt)
    params = list(inspect.signature(reader).parameters.values())[2:]  # after (src, ctx)
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def import_dataset(
    fmt: str,
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    copy: bool = False,
    crop: bool = False,
    min_count: int = 0,
    rare: str = "other",
    follow_symlinks: bool = False,
    **options: Any,
) -> ImportReport:
    """Import the dataset at ``src`` (format ``fmt``) into the catalog folder ``out``.

    Args:
        fmt: one of :data:`FORMATS`.
        src: the dataset folder in its official layout (or the JSON file for ``coco``).
        out: output folder; created when missing, its manifest, taxonomy and report are replaced.
        copy: copy the images to ``out/images`` instead of referencing them.
        crop: write one crop per item box to ``out/images`` (``deepfashion-attributes``, ``imaterialist-2021``).
        min_count: values with fewer examples than this are rare (0: keep every value).
        rare: ``other`` folds rare values into ``other``; ``drop`` removes them (labels become missing).
        follow_symlinks: accept images whose symlinks lead outside the dataset folder they are looked up in.
        **options: format-specific options (:func:`format_options` lists them).

    Returns:
        The report, also written to ``out/import_report.json``.

    Raises:
        VestisError: unknown format or option, missing dataset files, or a file that is not in the format.
    """
    reader = IMPORTERS.get(fmt)
    allowed = format_options(fmt)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise VestisError(f"{fmt}: unknown option(s) {unknown}; expected {sorted(allowed) or 'none'}")
    if crop and not IMPORTERS.meta(fmt).get("crop", False):
        raise VestisError(f"{fmt}: --crop is not supported; formats with crops: {IMPORTERS.names(crop=True)}")
    if rare not in RARE_MODES:
        raise VestisError(f"rare: expected one of {list(RARE_MODES)}, got {rare!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 0:
        raise VestisError(f"min_count: expected a whole number >= 0, got {min_count!r}")
    src_path, out_path = Path(src), Path(out)
    if not src_path.exists():
        raise VestisError(f"{src_path}: dataset not found")
    report = ImportReport(format=fmt, source=str(src_path), out=str(out_path))
    ctx = ImportContext(fmt, src_path, out_path, copy=copy, crop=crop, report=report, follow_symlinks=follow_symlinks)
    imported = reader(src_path, ctx, **options)
    return finalize(imported, ctx, min_count=min_count, rare=rare)  # type: ignore[arg-type]
