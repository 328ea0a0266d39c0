"""Clothing Attribute Dataset (Chen, Gallagher, Girod, ECCV 2012): ``images/NNNNNN.jpg`` + ``labels/*_GT.mat``.

Each ``labels/<name>_GT.mat`` holds one variable ``GT`` of shape N x 1 (N = 1856): row i is image i
(1-based, ``images/%06d.jpg``); values are coded as in the dataset README, ``NaN`` = the annotators
disagreed (a missing label).

Taxonomy (``name: clothing-attributes``), values in README order, lower case:

* ``category`` (category attribute): shirt, sweater, t-shirt, outerwear, suit, tank top, dress;
  hierarchy ``upper-body`` -> the first six, ``full-body`` -> dress (the object types of the
  hierarchical-label paper).
* single-label: ``sleeve_length`` (no sleeves, short sleeves, long sleeves), ``neckline`` (v-shape, round,
  other shapes), ``gender`` (male, female), ``collar``, ``placket``, ``necktie``, ``scarf`` (no X / has X),
  ``skin_exposure`` (low exposure, high exposure).
* multi-label ``colour`` (red, yellow, green, cyan, blue, purple, brown, white, gray, black, many colors)
  and ``pattern`` (solid, floral, spotted, graphics, plaid, striped) from the eleven colour flags and the six
  pattern flags (1 = no, 2 = yes): a value is present when its flag is 2. A group is labelled only when
  every flag of the group is known: one ``NaN`` flag makes the cell missing, because writing the known
  positives alone would turn the unknown flags into negatives (``partial_groups='positives'`` writes them
  anyway). A group whose flags are all 1 is missing too (the manifest has no empty set).
* ROI hints: small for neckline, collar, placket, necktie, scarf, sleeve length (the multi-scale paper's
  small-ROI group); large for category, colour, pattern, skin exposure.

Image numbers without a file are skipped (``no image``) and listed in ``details.missing_images``.
A code outside the README's values drops that label (``labels_dropped``); the row is kept.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np

from vestis.data.importers._common import (
    IMPORTERS,
    SKIP_NO_IMAGE,
    ImportContext,
    Imported,
    UnsafePath,
)
from vestis.data.manifest import Record
from vestis.data.taxonomy import Attribute
from vestis.errors import VestisError

__all__ = ["COLOURS", "PATTERNS", "SINGLE", "read_clothing_attributes"]

# attribute -> (label file stem, values for codes 1, 2, 3, ..., roi)
SINGLE: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "category": (
        "category",
        ("shirt", "sweater", "t-shirt", "outerwear", "suit", "tank top", "dress"),
        "large",
    ),
    "sleeve_length": ("sleevelength", ("no sleeves", "short sleeves", "long sleeves"), "small"),
    "neckline": ("neckline", ("v-shape", "round", "other shapes"), "small"),
    "gender": ("gender", ("male", "female"), None),
    "collar": ("collar", ("no collar", "has collar"), "small"),
    "placket": ("placket", ("no placket", "has placket"), "small"),
    "necktie": ("necktie", ("no necktie", "has necktie"), "small"),
    "scarf": ("scarf", ("no scarf", "has scarf"), "small"),
    "skin_exposure": ("skin_exposure", ("low exposure", "high exposure"), "large"),
}
# value -> label file stem; flag 2 = present
COLOURS: dict[str, str] = {
    "red": "red",
    "yellow": "yellow",
    "green": "green",
    "cyan": "cyan",
    "blue": "blue",
    "purple": "purple",
    "brown": "brown",
    "white": "white",
    "gray": "gray",
    "black": "black",
    "many colors": "many_colors",
}
PATTERNS: dict[str, str] = {
    "solid": "pattern_solid",
    "floral": "pattern_floral",
    "spotted": "pattern_spot",
    "graphics": "pattern_graphics",
    "plaid": "pattern_plaid",
    "striped": "pattern_stripe",
}
HIERARCHY = {
    "upper-body": ["shirt", "sweater", "t-shirt", "outerwear", "suit", "tank top"],
    "full-body": ["dress"],
}


def _load_gt(path: Path) -> np.ndarray:
    """The ``GT`` column of a label file as a float vector (NaN = missing)."""
    import scipy.io

    if not path.is_file():
        raise VestisError(f"{path}: label file not found (expected labels/<attribute>_GT.mat)")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for a damaged file
        raise VestisError(f"{path}: not a readable MATLAB file ({e})") from None
    names = [k for k in mat if not k.startswith("__")]
    key = "GT" if "GT" in mat else (names[0] if len(names) == 1 else None)
    if key is None:
        raise VestisError(f"{path}: GT: expected one variable 'GT', found {names}")
    gt = np.asarray(mat[key], dtype=np.float64)
    if gt.ndim != 2 or 1 not in gt.shape:
        raise VestisError(f"{path}: GT: expected an N x 1 column, got shape {gt.shape}")
    return gt.reshape(-1)


@IMPORTERS.register("clothing-attributes", crop=False)
def read_clothing_attributes(
    src: Path, ctx: ImportContext, *, partial_groups: Literal["missing", "positives"] = "missing"
) -> Imported:
    """Read the 26 label files in ``src/labels`` and the images in ``src/images``.

    Args:
        src: the dataset folder.
        ctx: import context.
        partial_groups: colour/pattern groups with some ``NaN`` flags: ``missing`` (default) leaves the cell
            empty; ``positives`` writes the flags known to be 2.
    """
    if partial_groups not in ("missing", "positives"):
        raise VestisError(f"partial_groups: expected 'missing' or 'positives', got {partial_groups!r}")
    labels_dir = src / "labels"
    if not labels_dir.is_dir():
        raise VestisError(f"{labels_dir}: label folder not found (expected labels/<attribute>_GT.mat)")
    stems = [s for s, _, _ in SINGLE.values()] + list(COLOURS.values()) + list(PATTERNS.values())
    gt = {stem: _load_gt(labels_dir / f"{stem}_GT.mat") for stem in stems}
    sizes = {stem: len(v) for stem, v in gt.items()}
    n = sizes[stems[0]]
    bad = {s: k for s, k in sizes.items() if k != n}
    if bad:
        raise VestisError(f"{labels_dir}: GT: the label files disagree on the image count ({n} vs {bad})")
    report = ctx.report
    images = src / "images"
    records: list[Record] = []
    missing: list[int] = []
    for i in range(n):
        number = i + 1
        report.rows_read += 1
        name = f"{number:06d}.jpg"
        try:
            path = ctx.find(name, images)
        except UnsafePath as e:
            ctx.skip_unsafe(e, f"labels row {number}: images/{name}")
            continue
        if path is None:
            missing.append(number)
            report.skip(SKIP_NO_IMAGE, f"labels row {number}: images/{name} not found")
            continue
        labels: dict[str, tuple[str, ...]] = {}
        for attr, (stem, values, _) in SINGLE.items():
            code = gt[stem][i]
            if math.isnan(code):
                continue
            k = int(code)
            if k != code or not 1 <= k <= len(values):
                report.drop_label(attr, f"code {code:g} not in 1..{len(values)}")
                continue
            labels[attr] = (values[k - 1],)
        for attr, group in (("colour", COLOURS), ("pattern", PATTERNS)):
            flags = [gt[stem][i] for stem in group.values()]
            if any(not math.isnan(f) and f not in (1.0, 2.0) for f in flags):
                report.drop_label(attr, "flag not 1, 2 or NaN")
                continue
            if any(math.isnan(f) for f in flags) and partial_groups == "missing":
                if not all(math.isnan(f) for f in flags):
                    report.drop_label(attr, "some flags unknown (NaN)")
                continue
            present = tuple(v for v, f in zip(group, flags, strict=True) if f == 2.0)
            if present:
                labels[attr] = present
            elif not any(math.isnan(f) for f in flags):
                report.drop_label(attr, "no flag set (an empty set cannot be written)")
        records.append(Record(id=f"{number:06d}", image=ctx.image(path, name), labels=labels))
    report.details["missing_images"] = {"count": len(missing), "numbers": missing}
    attributes = [Attribute(a, "single", vals, roi=roi) for a, (_, vals, roi) in SINGLE.items()]
    attributes += [
        Attribute("colour", "multi", tuple(COLOURS), roi="large"),
        Attribute("pattern", "multi", tuple(PATTERNS), roi="large"),
    ]
    return Imported(
        records=records,
        attributes=attributes,
        category_attribute="category",
        hierarchy={k: list(v) for k, v in HIERARCHY.items()},
        name="clothing-attributes",
    )
