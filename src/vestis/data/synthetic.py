"""A procedural fashion catalog with exact ground truth, for tests, demos and benchmarks.

Every image is drawn with Pillow from a :class:`Garment` (the design and colour of one item), so every label
is known exactly:

* object types upper body / lower body / full body / footwear form the taxonomy hierarchy over eleven
  categories;
* large-ROI attributes (``category``, ``colour``, ``pattern``, ``length``) are spread over the whole garment,
  small-ROI ones (``neckline``, ``sleeve``, ``closure``, ``pocket``, ``logo``) cover a few percent of the
  image, so a model that sees fine detail can be told apart from one that does not (the multi-scale paper's
  point);
* ``occasion`` (multi-label) follows fixed rules on visible cues (:func:`occasion_of`) with a small
  per-design flip rate: learnable, but not a copy of another attribute;
* an attribute that does not apply to a category (``applies_to``) is never labelled on it.

Items come as colour variants of one product (same design, another colour; a shared ``group``), each shot
with its own pose, background, lighting and occasional occlusion. The manifest may hold label noise, missing
labels and Zipf-imbalanced values (:class:`SynthOptions`); ``ground_truth.csv`` beside it holds the clean,
complete labels of the same images. The category is never dropped nor corrupted: it decides which attributes
apply, and a catalog always files a product somewhere. A noisy value is another value allowed for the category.
Titles are weak labels built from the clean labels with synonyms, omissions, typos and marketing words.

Random streams: designs, label noise, missing labels and titles each come from their own stream of the
seed, and every image from a stream seeded by ``(seed, index)``. So the output does not depend on the number
of workers, and changing one knob (say the missing rate) changes only what that knob controls: the images
stay the same.

Output (:func:`generate_catalog`)::

    DIR/images/<id>.jpg           product shots (JPEG quality 90 by default: small, and it exercises the
                                  JPEG decoding path that real catalogs need; ``image_format="png"`` for PNG)
    DIR/manifest.csv              observed labels (noise, missing labels), titles, groups; split left empty
    DIR/ground_truth.csv          the clean, complete labels of the same images
    DIR/taxonomy.yaml             :func:`synthetic_taxonomy`
    DIR/scenes/images/*.jpg       with ``scenes=True``: flat-lay outfits of 2-3 garments, in addition to
    DIR/scenes/annotations.json   the product shots, with COCO boxes whose categories are the object types
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import random
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from vestis.data.manifest import Manifest, Record, write_manifest
from vestis.data.taxonomy import Attribute, Taxonomy, save_taxonomy
from vestis.errors import VestisError
from vestis.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "HIERARCHY",
    "CatalogItem",
    "Garment",
    "RenderParams",
    "RenderedScene",
    "ScenePiece",
    "SceneSpec",
    "SynthOptions",
    "SynthResult",
    "generate_catalog",
    "occasion_of",
    "plan_catalog",
    "render_item",
    "render_scene",
    "sample_scene",
    "synthetic_taxonomy",
]

# ---------------------------------------------------------------------------------------------------------
# The taxonomy. Value order is frequency order: with imbalance a > 0 the k-th value is drawn with weight
# 1 / (k + 1) ** a (Zipf), so the first value of each list is the most common one.
# ---------------------------------------------------------------------------------------------------------
HIERARCHY: dict[str, tuple[str, ...]] = {
    "upper body": ("t-shirt", "shirt", "sweater"),
    "lower body": ("trousers", "skirt", "shorts"),
    "full body": ("dress", "jumpsuit"),
    "footwear": ("sneaker", "boot", "sandal"),
}
_CATEGORIES = ("t-shirt", "trousers", "sneaker", "dress", "shirt", "skirt", "sweater", "boot", "shorts")
_CATEGORIES += ("jumpsuit", "sandal")
_GARMENTS = tuple(c for c in _CATEGORIES if c not in HIERARCHY["footwear"])
_TOPS = ("t-shirt", "shirt", "sweater", "dress", "jumpsuit")  # everything with a neck and sleeves
_PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (238, 238, 234),
    "blue": (48, 102, 196),
    "grey": (128, 128, 132),
    "navy": (30, 40, 86),
    "red": (196, 36, 42),
    "green": (46, 128, 64),
    "pink": (232, 142, 176),
    "yellow": (232, 196, 46),
    "brown": (122, 82, 48),
}
_OCCASIONS = ("casual", "formal", "sport", "party")
# name, kind, values, applies_to, roi, description
_ATTRIBUTES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...] | None, str, str], ...] = (
    ("category", "single", _CATEGORIES, None, "large", "garment type: the silhouette"),
    ("colour", "single", tuple(_PALETTE), None, "large", "dominant colour; the pattern ink is a tint of it"),
    ("pattern", "single", ("solid", "striped", "checked", "dotted", "floral"), _GARMENTS, "large",
     "print over the whole garment"),
    ("length", "single", ("long", "knee", "short"), ("trousers", "skirt", "dress", "jumpsuit"), "large",
     "where the hem falls: the proportions of the whole garment (trousers: long or knee)"),
    ("neckline", "single", ("round", "v", "collar", "square"), _TOPS, "small", "shape of the neck opening"),
    ("sleeve", "single", ("short", "long", "sleeveless"), _TOPS, "small",
     "sleeve length; the largest of the small cues (4-11 % of the image between short and long)"),
    ("closure", "single", ("none", "buttons", "zip"), ("shirt", "sweater", "trousers", "shorts", "dress", "jumpsuit"),
     "small", "front fastening along the centre line (a drawstring when none on trousers and shorts)"),
    ("pocket", "single", ("no", "yes"), _GARMENTS, "small", "one patch pocket on the chest, hip or thigh"),
    ("logo", "single", ("none", "star", "diamond", "cross"), ("t-shirt", "shirt", "sweater", "sneaker"), "small",
     "a small glyph on the chest or on the side of the shoe"),
    ("occasion", "multi", _OCCASIONS, None, "large", "rules on visible cues (vestis.data.synthetic.occasion_of)"),
)  # fmt: skip
_NAMES = tuple(a[0] for a in _ATTRIBUTES)
# Per-category allowed values and their frequency order, where they differ from the taxonomy's.
_VALUE_ORDER: dict[tuple[str, str], tuple[str, ...]] = {
    ("length", "trousers"): ("long", "knee"),
    ("neckline", "shirt"): ("collar", "round", "v"),
    ("neckline", "sweater"): ("round", "v", "collar"),
    ("sleeve", "shirt"): ("long", "short", "sleeveless"),
    ("sleeve", "sweater"): ("long", "short"),
    ("sleeve", "dress"): ("sleeveless", "short", "long"),
    ("sleeve", "jumpsuit"): ("sleeveless", "short", "long"),
    ("closure", "shirt"): ("buttons", "zip", "none"),
    ("closure", "trousers"): ("zip", "buttons", "none"),
    ("closure", "jumpsuit"): ("zip", "buttons", "none"),
    ("logo", "sneaker"): ("star", "diamond", "cross", "none"),
}
_META = ("background", "occluded")


def synthetic_taxonomy() -> Taxonomy:
    """The taxonomy of the synthetic catalog (attributes, values, ``applies_to``, ``roi``, hierarchy)."""
    attrs = tuple(
        Attribute(name=n, kind=k, values=v, applies_to=a, roi=r, description=d)  # type: ignore[arg-type]
        for n, k, v, a, r, d in _ATTRIBUTES
    )
    return Taxonomy(attrs, category_attribute="category", hierarchy=dict(HIERARCHY), metadata=_META, name="synthetic")


def _allowed(name: str, category: str) -> tuple[str, ...] | None:
    """Values ``name`` may take on ``category`` in frequency order, or ``None`` when it does not apply."""
    spec = _ATTRIBUTES[_NAMES.index(name)]
    if spec[3] is not None and category not in spec[3]:
        return None
    return _VALUE_ORDER.get((name, category), spec[2])


# ---------------------------------------------------------------------------------------------------------
# Options and items
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthOptions:
    """Every knob of the generator, validated on construction (a bad value raises :class:`VestisError`)."""

    n: int = 1000  # product images; scenes come in addition
    size: int = 128  # side of the square images in pixels (>= 32: smaller cannot show a button)
    seed: int = 0  # everything is a function of the seed; same seed -> byte-identical output
    scenes: bool = False  # also draw multi-garment outfit scenes with COCO boxes
    label_noise: float = 0.0  # probability that an observed label is replaced by a wrong one
    missing_rate: float = 0.1  # probability that an applicable label is left empty (catalogs are incomplete)
    imbalance: float = 1.0  # Zipf exponent of value frequencies; 0 = balanced, 1 = about 10:1 over ten values
    clutter: float = 0.3  # probability of a cluttered background instead of a plain studio one
    occlusion: float = 0.1  # probability of an occluding patch (3-10 % of the image) over the shot
    lighting: float = 0.2  # strength of brightness / contrast / gradient changes (0 = studio light)
    max_rotation: float = 8.0  # degrees, +-: product shots are nearly upright
    max_variants: int = 3  # colour variants per product (group size is uniform in 1..max_variants)
    occasion_flip: float = 0.05  # per-design flip rate of each occasion value: the rules are a tendency
    title_typos: float = 0.03  # per-word probability of a misspelling in titles
    scene_count: int | None = None  # default n // 4 (at least 1)
    scene_size: int | None = None  # default 2 * size: an outfit needs more pixels than one garment
    image_format: str = "jpg"  # jpg (quality 90) or png
    workers: int | None = None  # processes; default min(2, cpus), 1 below 100 images; never changes the output

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> VestisError:
            return VestisError(f"synthetic catalog: {name}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("n", "size", "max_variants"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (32 if name == "size" else 1):
                raise bad(name, "an integer >= 32" if name == "size" else "a positive integer")
        if self.size > 2048:
            raise bad("size", "at most 2048 pixels")
        if self.max_variants > len(_PALETTE):
            raise bad("max_variants", f"at most {len(_PALETTE)} (the number of colours)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", "a non-negative integer")
        for name in ("label_noise", "missing_rate", "clutter", "occlusion", "lighting", "occasion_flip", "title_typos"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise bad(name, "a probability between 0 and 1")
        if (
            isinstance(self.imbalance, bool)
            or not isinstance(self.imbalance, int | float)
            or not 0 <= self.imbalance <= 10
        ):
            raise bad("imbalance", "a Zipf exponent between 0 and 10")
        if not 0 <= self.max_rotation <= 45:
            raise bad("max_rotation", "degrees between 0 and 45")
        for name in ("scene_count", "workers"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise bad(name, "a positive integer")
        if self.scene_size is not None and (not isinstance(self.scene_size, int) or not 32 <= self.scene_size <= 4096):
            raise bad("scene_size", "an integer between 32 and 4096")
        if self.image_format not in ("jpg", "png"):
            raise bad("image_format", "'jpg' or 'png'")

    @property
    def n_scenes(self) -> int:
        return (self.scene_count or max(1, self.n // 4)) if self.scenes else 0


@dataclass(frozen=True)
class Garment:
    """What is drawn: the clean labels of one item (``None`` where an attribute does not apply).

    Attributes:
        design_seed: fixes the design's free details (stripe width, motif layout); colour variants share it.
    """

    category: str
    colour: str
    pattern: str | None = None
    length: str | None = None
    neckline: str | None = None
    sleeve: str | None = None
    closure: str | None = None
    pocket: str | None = None
    logo: str | None = None
    occasion: tuple[str, ...] = ()
    design_seed: int = 0

    def labels(self) -> dict[str, tuple[str, ...]]:
        """Attribute -> values, for every attribute that applies (the ground truth)."""
        out: dict[str, tuple[str, ...]] = {}
        for name in _NAMES:
            v = getattr(self, name)
            if isinstance(v, tuple):
                if v:
                    out[name] = v
            elif v is not None:
                out[name] = (v,)
        return out


@dataclass(frozen=True)
class RenderParams:
    """How one image is shot; the defaults are a neutral studio shot (no jitter, light, noise or occluder).

    Attributes:
        rotation: degrees.
        scale: the item's longer side as a fraction of the image side (items are framed, not drawn to scale).
        offset: shift of the item's centre, as a fraction of the side.
        flip: mirror left-right.
        cluttered: random shapes behind the item instead of a plain backdrop.
        tone: backdrop colour.
        brightness, contrast: global gains.
        gradient, gradient_angle: a linear light falloff (relative change over the image) and its direction.
        noise: sensor noise, standard deviation in grey levels.
        occlusion: an occluding patch ``(x0, y0, x1, y1)`` in fractions of the side, or ``None``.
        tint: per-shot colour shift of the item (dye lots and white balance differ).
        seed: of the clutter, the noise and the occluder.
    """

    rotation: float = 0.0
    scale: float = 0.75
    offset: tuple[float, float] = (0.0, 0.0)
    flip: bool = False
    cluttered: bool = False
    tone: tuple[int, int, int] = (244, 244, 242)
    brightness: float = 1.0
    contrast: float = 1.0
    gradient: float = 0.0
    gradient_angle: float = 0.0
    noise: float = 0.0
    occlusion: tuple[float, float, float, float] | None = None
    tint: tuple[int, int, int] = (0, 0, 0)
    seed: int = 0


@dataclass(frozen=True)
class CatalogItem:
    """One planned product image: its clean garment, the observed labels and title, and how it is shot."""

    index: int
    id: str
    group: str
    garment: Garment
    labels: dict[str, tuple[str, ...]]
    title: str
    params: RenderParams


@dataclass(frozen=True)
class SynthResult:
    """Where the catalog was written and what it holds."""

    out_dir: Path
    manifest: Path
    ground_truth: Path
    taxonomy: Path
    images_dir: Path
    scenes_annotations: Path | None
    n_images: int
    n_groups: int
    n_labels: int  # labels written to the manifest
    n_missing: int  # applicable labels left empty
    n_noisy: int  # labels that differ from the ground truth
    n_scenes: int
    n_boxes: int


# ---------------------------------------------------------------------------------------------------------
# Planning: designs, variants, observed labels and titles (cheap; done in the main process)
# ---------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _cum_weights(k: int, a: float) -> tuple[float, ...]:
    return tuple(accumulate((i + 1) ** -a for i in range(k)))


def _pick(rng: random.Random, values: Sequence[str], a: float) -> str:
    cw = _cum_weights(len(values), a)
    return values[min(bisect_right(cw, rng.random() * cw[-1]), len(values) - 1)]


def occasion_of(g: Garment) -> tuple[str, ...]:
    """The occasions a design is tagged with before the per-design flips, from visible cues only.

    formal: a collared solid/striped shirt, long solid/striped trousers without a patch pocket, a long solid
    dress or jumpsuit, boots. sport: sneakers, a t-shirt or sweater with a logo, shorts without buttons, a
    zipped sweater. party: a short dress, skirt or jumpsuit, or a v/square-neck dress or jumpsuit in solid or
    dots. casual: checks, dots or florals, t-shirts, shorts, sandals, sneakers without a logo, and anything
    that matches no other rule. Colour is not a cue, so colour variants of a design share their occasions.
    """
    c, p = g.category, g.pattern
    occ: set[str] = set()
    if (
        (c == "shirt" and g.neckline == "collar" and p in ("solid", "striped"))
        or (c == "trousers" and g.length == "long" and p in ("solid", "striped") and g.pocket != "yes")
        or (c in ("dress", "jumpsuit") and g.length == "long" and p == "solid")
        or c == "boot"
    ):
        occ.add("formal")
    if (
        c == "sneaker"
        or (c in ("t-shirt", "sweater") and g.logo not in (None, "none"))
        or (c == "shorts" and g.closure != "buttons")
        or (c == "sweater" and g.closure == "zip")
    ):
        occ.add("sport")
    if (c in ("dress", "skirt", "jumpsuit") and g.length == "short") or (
        c in ("dress", "jumpsuit") and g.neckline in ("v", "square") and p in ("solid", "dotted")
    ):
        occ.add("party")
    if (
        p in ("checked", "dotted", "floral")
        or c in ("t-shirt", "shorts", "sandal")
        or (c == "sneaker" and g.logo == "none")
        or not occ
    ):
        occ.add("casual")
    return tuple(o for o in _OCCASIONS if o in occ)


def _sample_design(rng: random.Random, opts: SynthOptions, categories: Sequence[str] = _CATEGORIES) -> Garment:
    """A design (colour left as the most common one; variants set it)."""
    a = float(opts.imbalance)
    category = _pick(rng, categories, a)
    kw: dict[str, Any] = {}
    for name in _NAMES[2:-1]:
        allowed = _allowed(name, category)
        kw[name] = None if allowed is None else _pick(rng, allowed, a)
    g = Garment(category=category, colour=_ATTRIBUTES[1][2][0], design_seed=rng.getrandbits(31), **kw)
    occ = set(occasion_of(g))
    for o in _OCCASIONS:  # a fixed number of draws, so the flip rate does not shift later designs
        if rng.random() < opts.occasion_flip:
            occ ^= {o}
    return replace(g, occasion=tuple(o for o in _OCCASIONS if o in occ) or ("casual",))


def _variant_colours(rng: random.Random, k: int, a: float) -> list[str]:
    """``k`` distinct colours, drawn one after the other without replacement, with Zipf weights by rank."""
    left = list(_ATTRIBUTES[1][2])
    colours: list[str] = []
    for _ in range(k):
        weights = list(accumulate((_ATTRIBUTES[1][2].index(c) + 1) ** -a for c in left))
        j = min(bisect_right(weights, rng.random() * weights[-1]), len(left) - 1)
        colours.append(left.pop(j))
    return colours


_TITLE_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "category": {
        "t-shirt": ("T-Shirt", "Tshirt", "Tee"),
        "shirt": ("Shirt", "Casual Shirt"),
        "sweater": ("Sweater", "Pullover", "Jumper"),
        "trousers": ("Trousers", "Pants", "Chinos"),
        "skirt": ("Skirt",),
        "shorts": ("Shorts",),
        "dress": ("Dress",),
        "jumpsuit": ("Jumpsuit",),
        "sneaker": ("Sneakers", "Casual Shoes", "Trainers"),
        "boot": ("Boots", "Ankle Boots"),
        "sandal": ("Sandals",),
    },
    "colour": {
        "black": ("Black", "Jet Black"),
        "white": ("White", "Off White"),
        "blue": ("Blue", "Royal Blue"),
        "grey": ("Grey", "Gray", "Charcoal"),
        "navy": ("Navy Blue", "Navy"),
        "red": ("Red",),
        "green": ("Green", "Olive"),
        "pink": ("Pink",),
        "yellow": ("Yellow", "Mustard"),
        "brown": ("Brown", "Tan"),
    },
    "pattern": {
        "solid": ("Solid", "Plain"),
        "striped": ("Striped", "Stripe"),
        "checked": ("Checked", "Check", "Plaid"),
        "dotted": ("Polka Dot", "Dotted"),
        "floral": ("Floral", "Floral Print"),
    },
    "neckline": {
        "round": ("Round Neck",),
        "v": ("V-Neck",),
        "collar": ("Collared", "Spread Collar"),
        "square": ("Square Neck",),
    },
    "sleeve": {"short": ("Short Sleeve",), "long": ("Long Sleeve", "Full Sleeve"), "sleeveless": ("Sleeveless",)},
    "length": {"long": ("Maxi",), "knee": ("Midi", "Knee Length"), "short": ("Mini",)},  # skirts and dresses
    "leg length": {"long": ("Full Length",), "knee": ("Cropped", "Capri"), "short": ("Short",)},
    "occasion": {"casual": ("Casual",), "formal": ("Formal",), "sport": ("Sports",), "party": ("Party",)},
}
_BRANDS = ("Nordvik", "Aurelle", "Kestrel", "Maple & Moss", "Urban Loom", "Solstice", "Vantage", "Tidewell")
_HYPE = ("New", "Trendy", "Premium", "Classic", "Best Seller", "Limited Edition")
_AUDIENCE = ("Men", "Women", "Unisex", "Kids")
_FIT = ("Slim Fit", "Regular Fit", "Relaxed Fit", "Oversized")
_TAIL = ("- Best Price", "(Pack of 1)", "- Free Shipping")


def _typo(rng: random.Random, word: str) -> str:
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:  # swap two neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:  # drop one
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]  # double one


def _title(rng: random.Random, g: Garment, typos: float) -> str:
    """A product title from the clean labels: some words omitted, synonyms, typos and marketing noise."""
    words: list[str] = []

    def maybe(p: float, choices: Sequence[str]) -> None:
        if rng.random() < p:
            words.append(rng.choice(choices))

    maybe(0.5, _BRANDS)
    maybe(0.25, _HYPE)
    maybe(0.4, _AUDIENCE)
    maybe(0.85, _TITLE_WORDS["colour"][g.colour])
    if g.pattern is not None:
        maybe(0.3 if g.pattern == "solid" else 0.8, _TITLE_WORDS["pattern"][g.pattern])
    for name in ("neckline", "sleeve", "length"):
        v = getattr(g, name)
        if v is not None:
            legs = name == "length" and g.category in ("trousers", "jumpsuit")
            maybe(0.3, _TITLE_WORDS["leg length" if legs else name][v])
    maybe(0.3, _FIT)
    maybe(0.5, _TITLE_WORDS["occasion"][g.occasion[0]])
    maybe(0.95, _TITLE_WORDS["category"][g.category])
    maybe(0.15, _TAIL)
    if not words:
        words.append(_TITLE_WORDS["category"][g.category][0])
    return " ".join(_typo(rng, w) if rng.random() < typos else w for w in " ".join(words).split(" "))


def _observe(
    g: Garment, u_miss: np.ndarray, u_noise: np.ndarray, u_pick: np.ndarray, opts: SynthOptions
) -> dict[str, tuple[str, ...]]:
    """The labels a catalog would hold for ``g``: some missing, some wrong, the category always right.

    ``u_*`` are uniforms, one per attribute, drawn whatever the rates so that the rates do not shift streams.
    """
    clean = g.labels()
    out: dict[str, tuple[str, ...]] = {}
    for j, name in enumerate(_NAMES):
        if name not in clean:
            continue
        v = clean[name]
        # the category decides which attributes apply, and catalogs always file a product somewhere
        if name != "category":
            if u_miss[j] < opts.missing_rate:
                continue
            if u_noise[j] < opts.label_noise:
                if name == "occasion":  # toggle one value; never leave the set empty
                    o = _OCCASIONS[int(u_pick[j] * len(_OCCASIONS))]
                    s = set(v) ^ {o}
                    s = s or {_OCCASIONS[(_OCCASIONS.index(o) + 1) % len(_OCCASIONS)]}
                    v = tuple(x for x in _OCCASIONS if x in s)
                else:
                    allowed = _allowed(name, g.category) or ()
                    others = [x for x in allowed if x != v[0]]
                    v = (others[int(u_pick[j] * len(others))],)
        out[name] = v
    return out


def _sample_params(seed: int, index: int, opts: SynthOptions, stream: int = 1) -> RenderParams:
    """The shot of image ``index``: a fixed number of draws, so each knob changes only its own aspect."""
    rng = np.random.default_rng([seed, stream, index])
    u = rng.random(24)
    cluttered = bool(u[5] < opts.clutter)
    tone = (90 + 130 * u[6]) if cluttered else (215 + 35 * u[6])
    lt = opts.lighting
    occlusion = None
    if u[15] < opts.occlusion:
        # 3-10 % of the image, aspect ratio between 1:2 and 2:1
        area, aspect = 0.03 + 0.07 * u[16], 2.0 ** (2 * u[17] - 1)
        w, h = min(0.9, math.sqrt(area * aspect)), min(0.9, math.sqrt(area / aspect))
        x0, y0 = u[18] * (1 - w), u[19] * (1 - h)
        occlusion = (float(x0), float(y0), float(x0 + w), float(y0 + h))
    return RenderParams(
        rotation=float((2 * u[0] - 1) * opts.max_rotation),
        scale=float(0.65 + 0.2 * u[1]),
        offset=(float((2 * u[2] - 1) * 0.05), float((2 * u[3] - 1) * 0.05)),
        flip=bool(u[4] < 0.5),
        cluttered=cluttered,
        tone=tuple(int(np.clip(tone + 12 * (u[7 + i] - 0.5), 0, 255)) for i in range(3)),  # type: ignore[arg-type]
        brightness=float(1 + lt * (u[10] - 0.5)),
        contrast=float(1 + lt * (0.75 * u[11] - 0.5)),
        gradient=float(lt * u[12]),
        gradient_angle=float(2 * math.pi * u[13]),
        noise=float(1 + 3 * u[14] + (4 if cluttered else 0)),
        occlusion=occlusion,
        tint=tuple(round(16 * (float(u[20 + i]) - 0.5)) for i in range(3)),  # type: ignore[arg-type]
        seed=int(rng.integers(2**62)),
    )


def plan_catalog(opts: SynthOptions) -> list[CatalogItem]:
    """Every product image's garment, observed labels, title and shot, without drawing anything."""
    design_rng = random.Random(f"vestis-design:{opts.seed}")
    title_rng = random.Random(f"vestis-title:{opts.seed}")
    k = len(_NAMES)
    label_rng = np.random.default_rng([opts.seed, 2])
    width = max(6, len(str(opts.n - 1)))
    items: list[CatalogItem] = []
    group = 0
    while len(items) < opts.n:
        design = _sample_design(design_rng, opts)
        n_var = design_rng.randint(1, opts.max_variants)
        for colour in _variant_colours(design_rng, n_var, float(opts.imbalance)):
            i = len(items)
            if i == opts.n:
                break
            g = replace(design, colour=colour)
            items.append(
                CatalogItem(
                    index=i,
                    id=f"{i:0{width}d}",
                    group=f"g{group:0{width}d}",
                    garment=g,
                    labels=_observe(g, *label_rng.random((3, k)), opts),  # missing, noise, pick: (3, attributes)
                    title=_title(title_rng, g, opts.title_typos),
                    params=_sample_params(opts.seed, i, opts),
                )
            )
        group += 1
    return items


# ---------------------------------------------------------------------------------------------------------
# Geometry: each family of garments as polygons in unit coordinates (x right, y down, item centred at 0.5)
# ---------------------------------------------------------------------------------------------------------
Pt = tuple[float, float]


@dataclass
class _Geom:
    parts: list[list[Pt]] = field(default_factory=list)  # silhouette, filled with the pattern
    neck: tuple[float, float, float] | None = None  # centre x, top y, half-width
    placket: tuple[float, float, float] | None = None  # x, top y, bottom y (closure is drawn along it)
    pocket: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    logo: tuple[float, float, float] | None = None  # centre x, centre y, radius
    bands: list[list[Pt]] = field(default_factory=list)  # waistbands, cuffs, ribbing: a darker shade
    seams: list[list[Pt]] = field(default_factory=list)  # stitching lines
    soles: list[list[Pt]] = field(default_factory=list)  # footwear soles, in the sole colour
    sole: tuple[int, int, int] | None = None
    drawstring: Pt | None = None  # where the cords of a fly-less waist hang (closure none on trousers/shorts)


def _mirror(points: Sequence[Pt]) -> list[Pt]:
    return [(1.0 - x, y) for x, y in points]


def _neck_depth(neckline: str | None, nw: float) -> float:
    return {"round": 0.9, "v": 2.0, "square": 1.2, "collar": 1.0}.get(neckline or "", 0.0) * nw


def _top(g: Garment, ys: float, w: float, yh: float, wh: float, k: float, hem: str = "straight") -> _Geom:
    """Torso, sleeves, neck, chest pocket and logo of anything worn on the upper body."""
    c, nw, arm = 0.5, 0.065 * k, ys + 0.15 * k
    if g.sleeve == "sleeveless":
        left = [(c - nw, ys), (c - w + 0.045 * k, ys + 0.005), (c - w + 0.03 * k, ys + 0.09 * k), (c - w + 0.005, arm)]
    else:
        left = [(c - nw, ys), (c - w, ys + 0.03 * k), (c - w, arm)]
    if hem == "curved":  # a shirt tail
        bottom = [(c - wh, yh - 0.03), (c - 0.6 * wh, yh), (c, yh + 0.015), (c + 0.6 * wh, yh), (c + wh, yh - 0.03)]
    else:
        bottom = [(c - wh, yh), (c + wh, yh)]
    geom = _Geom(parts=[left + bottom + _mirror(left[::-1])])
    if g.sleeve in ("short", "long"):
        theta, length, cuff = (math.radians(42), 0.12 * k, 0.1 * k)
        if g.sleeve == "long":
            theta, length, cuff = (math.radians(16), 0.46 * k, 0.07 * k)
        s, a = (c - w, ys + 0.03 * k), (c - w, arm)
        d, nrm = (-math.sin(theta), math.cos(theta)), (math.cos(theta), math.sin(theta))
        e = (s[0] + length * d[0], s[1] + length * d[1])
        f = (e[0] + cuff * nrm[0], e[1] + cuff * nrm[1])
        sleeve = [s, e, f, a]
        geom.parts += [sleeve, _mirror(sleeve)]
        if g.sleeve == "long" and g.category in ("shirt", "sweater"):
            b = 0.04 * k
            band = [(e[0] - b * d[0], e[1] - b * d[1]), e, f, (f[0] - b * d[0], f[1] - b * d[1])]
            geom.bands += [band, _mirror(band)]
    geom.neck = (c, ys, nw)
    geom.pocket = (c + 0.05 * k, ys + 0.1 * k, c + 0.125 * k, ys + 0.185 * k)
    if g.category == "t-shirt":
        geom.logo = (c, ys + 0.22 * k, 0.045 * k)
    else:
        geom.logo = (c - 0.095 * k, ys + 0.13 * k, 0.03 * k)
    geom.placket = (c, ys + _neck_depth(g.neckline, nw), yh)
    return geom


def _legs(top: float, crotch: float, hem: float, hw: float, hem_w: float, inner: float = 0.025) -> list[Pt]:
    c = 0.5
    return [
        (c - hw, top),
        (c + hw, top),
        (c + hw + 0.02, top + 0.2 * (crotch - top) + 0.1),
        (c + hem_w, hem),
        (c + inner, hem),
        (c, crotch),
        (c - inner, hem),
        (c - hem_w, hem),
        (c - hw - 0.02, top + 0.2 * (crotch - top) + 0.1),
    ]


def _geometry(g: Garment) -> _Geom:
    c, cat = 0.5, g.category
    if cat == "t-shirt":
        geom = _top(g, 0.2, 0.2, 0.76, 0.19, 1.0)
        geom.seams.append([(c - 0.19, 0.74), (c + 0.19, 0.74)])
    elif cat == "shirt":
        geom = _top(g, 0.16, 0.19, 0.84, 0.18, 1.0, hem="curved")
    elif cat == "sweater":
        geom = _top(g, 0.2, 0.21, 0.8, 0.18, 1.0)
        geom.bands.append([(c - 0.18, 0.75), (c + 0.18, 0.75), (c + 0.18, 0.8), (c - 0.18, 0.8)])
        geom.seams += [[(x, 0.755), (x, 0.795)] for x in np.arange(c - 0.17, c + 0.18, 0.02).tolist()]
        geom.placket = (c, geom.placket[1], 0.75) if geom.placket else None
    elif cat in ("dress", "jumpsuit"):
        geom = _top(g, 0.1, 0.15, 0.42, 0.125, 0.85)
        if cat == "dress":
            hem, hw = {"short": (0.62, 0.2), "knee": (0.76, 0.23), "long": (0.94, 0.27)}[g.length or "knee"]
            geom.parts.append([(c - 0.125, 0.42), (c + 0.125, 0.42), (c + hw, hem), (c - hw, hem)])
            geom.seams.append([(c - 0.125, 0.42), (c + 0.125, 0.42)])
            geom.pocket = (c + 0.04, 0.48, c + 0.115, 0.56)
            geom.placket = (c, geom.placket[1], 0.42) if geom.placket else None
        else:
            hem = {"short": 0.68, "knee": 0.78, "long": 0.94}[g.length or "long"]
            geom.parts.append(_legs(0.42, 0.6, hem, 0.125, 0.14, inner=0.02))
            geom.bands.append([(c - 0.127, 0.41), (c + 0.127, 0.41), (c + 0.13, 0.445), (c - 0.13, 0.445)])
            geom.placket = (c, geom.placket[1], 0.41) if geom.placket else None
        geom.logo = None
    elif cat in ("trousers", "shorts"):
        geom = _Geom()
        if cat == "trousers":
            hem = {"knee": 0.64, "long": 0.92}[g.length or "long"]
            geom.parts.append(_legs(0.08, 0.4, hem, 0.16, 0.165))
            geom.seams += [[(c - 0.095, 0.3), (c - 0.095, hem)], [(c + 0.095, 0.3), (c + 0.095, hem)]]
            geom.pocket = (c - 0.16, 0.45, c - 0.075, 0.54)
        else:
            geom.parts.append(_legs(0.08, 0.36, 0.47, 0.16, 0.19))
            geom.pocket = (c - 0.165, 0.29, c - 0.085, 0.37)
        geom.bands.append([(c - 0.16, 0.08), (c + 0.16, 0.08), (c + 0.162, 0.115), (c - 0.162, 0.115)])
        geom.drawstring = (c, 0.1)
        geom.placket = (c, 0.125, 0.29)
    elif cat == "skirt":
        hem, hw = {"short": (0.42, 0.21), "knee": (0.62, 0.25), "long": (0.9, 0.29)}[g.length or "knee"]
        waistband = [(c - 0.14, 0.1), (c + 0.14, 0.1), (c + 0.142, 0.135), (c - 0.142, 0.135)]
        geom = _Geom(parts=[[(c - 0.14, 0.1), (c + 0.14, 0.1), (c + hw, hem), (c - hw, hem)]], bands=[waistband])
        geom.seams.append([(c - hw + 0.01, hem - 0.02), (c + hw - 0.01, hem - 0.02)])
        geom.pocket = (c + 0.04, 0.17, c + 0.12, 0.25)
    elif cat == "sneaker":
        geom = _Geom(sole=(232, 230, 224) if _lum(_PALETTE[g.colour]) < 200 else (120, 120, 122))
        geom.parts.append([
            (0.15, 0.6), (0.16, 0.42), (0.2, 0.36), (0.3, 0.37), (0.4, 0.41), (0.46, 0.35), (0.52, 0.37),
            (0.62, 0.44), (0.76, 0.5), (0.84, 0.54), (0.86, 0.6),
        ])  # fmt: skip
        geom.soles.append([(0.13, 0.6), (0.87, 0.6), (0.88, 0.64), (0.85, 0.67), (0.16, 0.67), (0.12, 0.64)])
        geom.seams += [[(0.47 + 0.04 * i, 0.39 + 0.025 * i), (0.5 + 0.04 * i, 0.37 + 0.025 * i)] for i in range(4)]
        geom.seams.append([(0.7, 0.6), (0.72, 0.5)])  # toe cap
        geom.logo = (0.38, 0.52, 0.05)
    elif cat == "boot":
        geom = _Geom(sole=(45, 38, 32))
        geom.parts.append([
            (0.24, 0.14), (0.48, 0.14), (0.5, 0.5), (0.6, 0.56), (0.76, 0.62), (0.82, 0.68), (0.82, 0.74),
            (0.22, 0.74), (0.22, 0.5),
        ])  # fmt: skip
        geom.soles += [
            [(0.2, 0.74), (0.84, 0.74), (0.84, 0.79), (0.2, 0.79)],
            [(0.2, 0.79), (0.33, 0.79), (0.33, 0.85), (0.21, 0.85)],
        ]
        geom.bands.append([(0.24, 0.14), (0.48, 0.14), (0.482, 0.18), (0.238, 0.18)])
    else:  # sandal
        geom = _Geom(sole=_shade(_PALETTE[g.colour], 0.7))
        geom.parts += [
            [(0.62, 0.61), (0.7, 0.5), (0.78, 0.52), (0.74, 0.61)],
            [(0.42, 0.62), (0.48, 0.44), (0.56, 0.45), (0.54, 0.62)],
            [(0.2, 0.63), (0.22, 0.4), (0.3, 0.4), (0.3, 0.63)],
            [(0.22, 0.42), (0.5, 0.47), (0.5, 0.51), (0.22, 0.47)],
        ]
        geom.soles += [
            [(0.14, 0.62), (0.86, 0.6), (0.88, 0.64), (0.14, 0.67)],
            [(0.15, 0.67), (0.87, 0.64), (0.87, 0.66), (0.15, 0.69)],
        ]
    if g.neckline is None:
        geom.neck = None
    if g.closure is None:
        geom.placket = None
    if g.pocket is None:
        geom.pocket = None
    if g.logo is None:
        geom.logo = None
    return geom


# ---------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------
_SS = 2  # draw at twice the size and box-filter down: antialiased edges for the price of a 2x canvas
RGB = tuple[int, int, int]


def _lum(c: Sequence[int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _shade(c: Sequence[int], f: float) -> RGB:
    return tuple(int(max(0, min(255, round(v * f)))) for v in c)  # type: ignore[return-value]


def _mix(c: Sequence[int], d: Sequence[int], t: float) -> RGB:
    return tuple(round(a + (b - a) * t) for a, b in zip(c, d, strict=True))  # type: ignore[return-value]


def _tones(base: RGB) -> dict[str, RGB]:
    """Derived colours; dark bases get lighter details so that the details stay visible."""
    dark = _lum(base) < 70
    white, black = (255, 255, 255), (0, 0, 0)
    return {
        "base": base,
        "accent": _mix(base, white, 0.6) if _lum(base) < 110 else _mix(base, black, 0.5),
        "outline": _mix(base, white, 0.3) if dark else _shade(base, 0.62),
        "inner": _mix(base, white, 0.15) if dark else _shade(base, 0.6),
        "band": _mix(base, white, 0.1) if dark else _shade(base, 0.85),
        "pocket": _mix(base, white, 0.08) if dark else _shade(base, 0.9),
        "ink": (35, 35, 40) if _lum(base) > 140 else (236, 236, 232),
        "metal": (168, 168, 174),
    }


def _pattern(g: Garment, tones: dict[str, RGB], s: int, bounds: tuple[float, float, float, float]) -> Image.Image:
    """The garment's fabric on the whole ``s`` x ``s`` canvas, in canonical coordinates (it turns with it)."""
    img = Image.new("RGB", (s, s), tones["base"])
    if g.pattern in (None, "solid"):
        return img
    r = random.Random(g.design_seed)  # the design's details, shared by its colour variants
    accent = tones["accent"]
    x0, y0, x1, y1 = (v * s for v in bounds)
    d = ImageDraw.Draw(img)
    if g.pattern == "striped":
        period, duty, vertical = r.uniform(0.035, 0.07) * s, r.uniform(0.3, 0.5), r.random() < 0.3
        t = r.random() * period + (x0 if vertical else y0) - period
        while t < (x1 if vertical else y1):
            box = (t, y0, t + duty * period, y1) if vertical else (x0, t, x1, t + duty * period)
            d.rectangle(box, fill=accent)
            t += period
    elif g.pattern == "checked":  # gingham: half-strength bands each way, full strength where they cross
        period, ph, pv = r.uniform(0.06, 0.1) * s, r.random(), r.random()
        grid = np.arange(s, dtype=np.float32)
        h = ((grid / period + ph) % 1.0 < 0.5).astype(np.float32)
        alpha = 0.35 * h[:, None] + 0.35 * ((grid / period + pv) % 1.0 < 0.5)[None, :]  # (s, s)
        base = np.asarray(tones["base"], dtype=np.float32)
        arr = base + (np.asarray(accent, dtype=np.float32) - base) * alpha[..., None]  # (s, s, 3)
        img = Image.fromarray(np.round(arr).astype(np.uint8))
    elif g.pattern == "dotted":
        period = r.uniform(0.05, 0.08) * s
        rad, py = r.uniform(0.22, 0.32) * period, r.random() * period
        for j, y in enumerate(np.arange(y0 - period + py, y1 + period, 0.87 * period).tolist()):
            for x in np.arange(x0 - period + (j % 2) * period / 2, x1 + period, period).tolist():
                d.ellipse((x - rad, y - rad, x + rad, y + rad), fill=accent)
    else:  # floral: five petals around a contrasting heart, on a jittered grid
        period = r.uniform(0.08, 0.11) * s
        heart = (236, 200, 70) if g.colour != "yellow" else (250, 250, 246)
        pr, pd = 0.16 * period, 0.2 * period
        for y in np.arange(y0 - period / 2, y1 + period, period).tolist():
            for x in np.arange(x0 - period / 2, x1 + period, period).tolist():
                cx, cy = x + r.uniform(-0.25, 0.25) * period, y + r.uniform(-0.25, 0.25) * period
                a0 = r.random() * 2 * math.pi
                for p in range(5):
                    a = a0 + 2 * math.pi * p / 5
                    px, py2 = cx + pd * math.cos(a), cy + pd * math.sin(a)
                    d.ellipse((px - pr, py2 - pr, px + pr, py2 + pr), fill=accent)
                d.ellipse((cx - 0.09 * period, cy - 0.09 * period, cx + 0.09 * period, cy + 0.09 * period), fill=heart)
    return img


def _glyph(kind: str, cx: float, cy: float, r: float) -> list[Pt]:
    if kind == "star":
        return [
            (cx + (r if i % 2 == 0 else 0.42 * r) * math.sin(math.pi * i / 5),
             cy - (r if i % 2 == 0 else 0.42 * r) * math.cos(math.pi * i / 5))
            for i in range(10)
        ]  # fmt: skip
    if kind == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    t = 0.33 * r  # cross: a plus sign
    return [
        (cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx + t, cy + t),
        (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t),
    ]  # fmt: skip


def _neck_shapes(kind: str, nx: float, ny: float, nw: float) -> tuple[list[Pt], list[list[Pt]]]:
    """The opening (showing the inside of the back) and, for a collar, its two flaps."""
    if kind == "v":
        return [(nx - nw, ny), (nx + nw, ny), (nx, ny + 2 * nw)], []
    if kind == "square":
        return [
            (nx - 0.85 * nw, ny),
            (nx + 0.85 * nw, ny),
            (nx + 0.85 * nw, ny + 1.2 * nw),
            (nx - 0.85 * nw, ny + 1.2 * nw),
        ], []
    depth = 0.5 * nw if kind == "collar" else 0.9 * nw
    opening = [(nx + nw * math.cos(t), ny + depth * math.sin(t)) for t in np.linspace(0, math.pi, 9).tolist()]
    if kind != "collar":
        return opening, []
    flap = [
        (nx - 1.05 * nw, ny - 0.15 * nw),
        (nx, ny + 0.7 * nw),
        (nx - 0.35 * nw, ny + 1.3 * nw),
        (nx - 1.25 * nw, ny + 0.55 * nw),
    ]
    return opening, [flap, [(2 * nx - x, y) for x, y in flap]]


def _draw_garment(g: Garment, s: int, tint: Sequence[int] = (0, 0, 0)) -> Image.Image:
    """The item alone, upright and centred, on a transparent ``s`` x ``s`` RGBA canvas."""
    geom = _geometry(g)
    base: RGB = tuple(int(max(0, min(255, v + t))) for v, t in zip(_PALETTE[g.colour], tint, strict=True))  # type: ignore[assignment]
    tones = _tones(base)

    def px(points: Sequence[Pt]) -> list[Pt]:
        return [(x * s, y * s) for x, y in points]

    def rgba(c: RGB) -> tuple[int, int, int, int]:
        return (*c, 255)

    xs = [x for part in geom.parts for x, _ in part]
    ys = [y for part in geom.parts for _, y in part]
    mask = Image.new("L", (s, s), 0)
    md = ImageDraw.Draw(mask)
    for part in geom.parts:
        md.polygon(px(part), fill=255)
    # the fabric everywhere, then the silhouette as alpha: transparent pixels keep the fabric colour, so
    # bilinear resampling later blends edges towards the garment rather than towards black
    layer = _pattern(g, tones, s, (min(xs), min(ys), max(xs), max(ys))).convert("RGBA")
    layer.putalpha(mask)
    d = ImageDraw.Draw(layer)
    lw = max(1, round(0.006 * s))
    for band in geom.bands:
        d.polygon(px(band), fill=rgba(tones["band"]))
    for sole in geom.soles:
        d.polygon(px(sole), fill=rgba(geom.sole or tones["inner"]))
    for part in geom.parts:
        pts = px(part)
        d.line([*pts, pts[0]], fill=rgba(tones["outline"]), width=lw, joint="curve")
    for seam in geom.seams:
        d.line(px(seam), fill=rgba(tones["outline"]), width=max(1, lw // 2))
    if geom.neck is not None and g.neckline is not None:
        opening, flaps = _neck_shapes(g.neckline, *geom.neck)
        d.polygon(px(opening), fill=rgba(tones["inner"]), outline=rgba(tones["outline"]), width=lw)
        if g.category == "sweater":  # a ribbed neckband
            d.line(px(opening), fill=rgba(tones["band"]), width=2 * lw)
        for flap in flaps:
            d.polygon(px(flap), fill=rgba(tones["base"]), outline=rgba(tones["outline"]), width=lw)
    if geom.placket is not None and g.closure is not None:
        x, y0, y1 = geom.placket
        if g.closure == "buttons":
            d.line(px([(x + 0.012, y0), (x + 0.012, y1)]), fill=rgba(tones["outline"]), width=max(1, lw // 2))
            count = max(2, round((y1 - y0) / 0.09))
            for i in range(count):
                by = y0 + 0.025 + (y1 - y0 - 0.05) * i / max(1, count - 1)
                d.ellipse(px([(x - 0.011, by - 0.011), (x + 0.011, by + 0.011)]), fill=rgba(tones["ink"]))
        elif g.closure == "zip":
            d.line(px([(x, y0), (x, y1)]), fill=rgba(tones["metal"]), width=max(1, round(0.01 * s)))
            d.rectangle(px([(x - 0.009, y0), (x + 0.009, y0 + 0.035)]), fill=rgba(_shade(tones["metal"], 0.7)))
        elif geom.drawstring is not None:  # no fly: an elastic waist tied with a drawstring
            kx, ky = geom.drawstring
            for dx, ex in ((-0.008, -0.03), (0.008, 0.025)):
                d.line(px([(kx + dx, ky), (kx + ex, ky + 0.07)]), fill=rgba(tones["ink"]), width=lw)
    if geom.pocket is not None and g.pocket == "yes":
        x0, y0, x1, y1 = geom.pocket
        d.rectangle(px([(x0, y0), (x1, y1)]), fill=rgba(tones["pocket"]), outline=rgba(tones["outline"]), width=lw)
        d.line(px([(x0, y0 + 0.015), (x1, y0 + 0.015)]), fill=rgba(tones["outline"]), width=max(1, lw // 2))
    if geom.logo is not None and g.logo not in (None, "none"):
        d.polygon(px(_glyph(str(g.logo), *geom.logo)), fill=rgba(tones["ink"]))
    return layer


def _inverse(m: np.ndarray) -> tuple[float, ...]:
    """PIL's AFFINE data (output -> input) from a forward 2x3 matrix (input -> output)."""
    a = m[:, :2]
    inv = np.linalg.inv(a)
    return tuple(np.concatenate([inv, -inv @ m[:, 2:]], axis=1).ravel().tolist())


def _forward(rotation: float, scale: float, flip: bool, src: Pt, dst: Pt) -> np.ndarray:
    """2x3 matrix: mirror (optional), rotate and scale about ``src``, then move ``src`` to ``dst``."""
    t = math.radians(rotation)
    a = scale * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    if flip:
        a = a @ np.diag([-1.0, 1.0])
    return np.concatenate([a, (np.asarray(dst) - a @ np.asarray(src))[:, None]], axis=1)


def _background(p: RenderParams, s: int) -> Image.Image:
    img = Image.new("RGB", (s, s), p.tone)
    if not p.cluttered:
        return img
    r = random.Random(p.seed)
    d = ImageDraw.Draw(img)
    for _ in range(r.randint(8, 16)):
        colour = (r.randrange(256), r.randrange(256), r.randrange(256))
        cx, cy, w, h = r.random() * s, r.random() * s, r.uniform(0.05, 0.4) * s, r.uniform(0.05, 0.4) * s
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        kind = r.randrange(4)
        if kind == 0:
            d.rectangle(box, fill=colour)
        elif kind == 1:
            d.ellipse(box, fill=colour)
        elif kind == 2:
            d.polygon([(r.random() * s, r.random() * s) for _ in range(3)], fill=colour)
        else:
            d.line([(box[0], box[1]), (box[2], box[3])], fill=colour, width=max(1, round(r.uniform(0.005, 0.03) * s)))
    return img


def _finish(img: Image.Image, p: RenderParams) -> Image.Image:
    """Lighting, sensor noise and the occluder, at the output resolution."""
    neutral = p.brightness == 1 and p.contrast == 1 and p.gradient == 0 and p.noise == 0 and p.occlusion is None
    if neutral:
        return img
    arr = np.asarray(img, dtype=np.float32)  # (H, W, 3)
    h, w = arr.shape[:2]
    rng = np.random.default_rng(p.seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (xx / w - 0.5) * math.cos(p.gradient_angle) + (yy / h - 0.5) * math.sin(p.gradient_angle)  # (H, W)
    gain = p.brightness * (1 + p.gradient * ramp)
    arr = ((arr - 128) * p.contrast + 128) * gain[..., None]
    if p.noise > 0:
        arr = arr + rng.normal(0, p.noise, arr.shape).astype(np.float32)
    if p.occlusion is not None:
        x0, y0, x1, y1 = (round(v * n) for v, n in zip(p.occlusion, (w, h, w, h), strict=True))
        colour = rng.integers(0, 256, 3).astype(np.float32)
        patch = colour + rng.normal(0, 10, (max(0, y1 - y0), max(0, x1 - x0), 3))
        arr[y0:y1, x0:x1] = patch
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))


def _frame(g: Garment) -> tuple[float, float, float, float]:
    """Bounding box (unit coordinates) of the item's category and length: short sleeves, no details."""
    bare = replace(g, sleeve="short" if g.sleeve else None, neckline=None, closure=None, pocket=None, logo=None)
    points = [p for part in _geometry(bare).parts for p in part]
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return min(xs), min(ys), max(xs), max(ys)


def render_item(garment: Garment, params: RenderParams, size: int) -> Image.Image:
    """A product shot of ``garment`` (``size`` x ``size`` RGB); same arguments -> same pixels."""
    s = size * _SS
    layer = _draw_garment(garment, s, params.tint)
    # Frame the item like a product photographer, whatever its size (so a length shows as a proportion),
    # but from the large parts only: a collar or long sleeves must not rescale the whole picture.
    x0, y0, x1, y1 = _frame(garment)
    scale = params.scale / max(x1 - x0, y1 - y0)
    dst = (s / 2 + params.offset[0] * s, s / 2 + params.offset[1] * s)
    m = _forward(params.rotation, scale, params.flip, ((x0 + x1) * s / 2, (y0 + y1) * s / 2), dst)
    layer = layer.transform((s, s), Image.Transform.AFFINE, _inverse(m), resample=Image.Resampling.BILINEAR)
    canvas = _background(params, s)
    canvas.paste(layer, (0, 0), layer)
    return _finish(canvas.reduce(_SS), params)


# ---------------------------------------------------------------------------------------------------------
# Scenes: flat-lay outfits with one box per garment
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScenePiece:
    """One garment of a scene, fitted (rotated and scaled) into its slot.

    Attributes:
        slot: ``(x0, y0, x1, y1)`` in fractions of the side; slots never overlap, so neither do garments.
        fill: fraction of the slot that the rotated garment's bounding box spans along its tighter side.
        shift: where the garment sits in the room left in its slot, -1..1 on each axis.
    """

    garment: Garment
    slot: tuple[float, float, float, float]
    rotation: float = 0.0
    fill: float = 0.9
    flip: bool = False
    shift: tuple[float, float] = (0.0, 0.0)
    tint: tuple[int, int, int] = (0, 0, 0)


@dataclass(frozen=True)
class SceneSpec:
    """A scene: its pieces and the shot (background, lighting, noise; pose and occlusion are not used)."""

    pieces: tuple[ScenePiece, ...]
    params: RenderParams = field(default_factory=RenderParams)


class RenderedScene(NamedTuple):
    """A drawn scene with, per piece, its COCO box ``(x, y, w, h)`` in pixels and its pixel area."""

    image: Image.Image
    boxes: list[tuple[int, int, int, int]]
    areas: list[int]


def sample_scene(opts: SynthOptions, index: int) -> SceneSpec:
    """Scene ``index``: top + bottom + shoes, dress/jumpsuit + shoes, or top + bottom, in a jittered 2x2 grid."""
    rng = random.Random(f"vestis-scene:{opts.seed}:{index}")
    pad = 0.015
    sx, sy = rng.uniform(0.42, 0.58), rng.uniform(0.42, 0.58)
    cells = [(0.0, 0.0, sx, sy), (sx, 0.0, 1.0, sy), (0.0, sy, sx, 1.0), (sx, sy, 1.0, 1.0)]
    u = rng.random()
    if u < 0.3:  # a full-body piece takes a whole column
        left = rng.random() < 0.5
        column = (0.0, 0.0, sx, 1.0) if left else (sx, 0.0, 1.0, 1.0)
        shoe_cell = cells[(1 if left else 0) + 2 * rng.randrange(2)]
        plan = [("full body", column), ("footwear", shoe_cell)]
    else:
        order = rng.sample(range(4), 4)
        types = ["upper body", "lower body"] + (["footwear"] if u < 0.75 else [])
        plan = [(t, cells[order[i]]) for i, t in enumerate(types)]
    pieces = []
    for object_type, (x0, y0, x1, y1) in plan:
        design = _sample_design(rng, opts, HIERARCHY[object_type])
        g = replace(design, colour=_variant_colours(rng, 1, float(opts.imbalance))[0])
        pieces.append(
            ScenePiece(
                garment=g,
                slot=(x0 + pad, y0 + pad, x1 - pad, y1 - pad),
                rotation=rng.uniform(-1, 1) * opts.max_rotation * 1.5,
                fill=rng.uniform(0.8, 0.97),
                flip=rng.random() < 0.5,
                shift=(rng.uniform(-1, 1), rng.uniform(-1, 1)),
                tint=tuple(rng.randint(-8, 8) for _ in range(3)),  # type: ignore[arg-type]
            )
        )
    params = replace(_sample_params(opts.seed, index, opts, stream=5), occlusion=None)
    return SceneSpec(pieces=tuple(pieces), params=params)


def render_scene(spec: SceneSpec, size: int) -> RenderedScene:
    """Draw ``spec`` at ``size`` x ``size``; each box is tight around every pixel its garment touches."""
    s = size * _SS
    canvas = _background(spec.params, s)
    boxes: list[tuple[int, int, int, int]] = []
    areas: list[int] = []
    for piece in spec.pieces:
        layer = _draw_garment(piece.garment, s, piece.tint)
        bx0, by0, bx1, by1 = layer.getchannel("A").getbbox() or (0, 0, s, s)
        hx, hy = (bx1 - bx0) / 2, (by1 - by0) / 2
        t = math.radians(piece.rotation)
        # half extents of the rotated bounding box, so that the rotated garment fits its slot exactly
        rx, ry = abs(math.cos(t)) * hx + abs(math.sin(t)) * hy, abs(math.sin(t)) * hx + abs(math.cos(t)) * hy
        x0, y0, x1, y1 = (v * s for v in piece.slot)
        scale = piece.fill * min((x1 - x0) / 2 / rx, (y1 - y0) / 2 / ry)
        room_x, room_y = (x1 - x0) / 2 - scale * rx, (y1 - y0) / 2 - scale * ry
        dst = ((x0 + x1) / 2 + piece.shift[0] * room_x, (y0 + y1) / 2 + piece.shift[1] * room_y)
        m = _forward(piece.rotation, scale, piece.flip, ((bx0 + bx1) / 2, (by0 + by1) / 2), dst)
        layer = layer.transform((s, s), Image.Transform.AFFINE, _inverse(m), resample=Image.Resampling.BILINEAR)
        canvas.paste(layer, (0, 0), layer)
        alpha = layer.getchannel("A").reduce(_SS)
        bbox = alpha.getbbox()
        if bbox is None:  # cannot happen for a garment inside the frame; kept out of the annotations if it did
            boxes.append((0, 0, 0, 0))
            areas.append(0)
            continue
        boxes.append((bbox[0], bbox[1], bbox[2] - bbox[0], bbox[3] - bbox[1]))
        areas.append(int(np.count_nonzero(np.asarray(alpha))))
    return RenderedScene(_finish(canvas.reduce(_SS), spec.params), boxes, areas)


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------
def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _run_task(task: tuple[str, int, Any, str, int, str]) -> tuple[str, int, Any]:
    """Draw and write one image (runs in a worker process); scenes return their boxes."""
    kind, index, payload, path, size, fmt = task
    if kind == "item":
        garment, params = payload
        atomic_write_bytes(path, _encode(render_item(garment, params, size), fmt))
        return kind, index, None
    scene = render_scene(payload, size)
    atomic_write_bytes(path, _encode(scene.image, fmt))
    return kind, index, (scene.boxes, scene.areas)


def _run_all(
    tasks: list[tuple[str, int, Any, str, int, str]], workers: int, progress: Callable[[int, int], None] | None
) -> dict[int, Any]:
    scene_out: dict[int, Any] = {}
    total = len(tasks)
    if progress:
        progress(0, total)

    def collect(results: Iterable[tuple[str, int, Any]]) -> None:
        for done, (kind, index, out) in enumerate(results, start=1):
            if kind == "scene":
                scene_out[index] = out
            if progress:
                progress(done, total)

    if workers <= 1:
        collect(map(_run_task, tasks))
    else:
        # spawn, not fork: the caller may hold threads (torch) that a forked child would inherit half-locked
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            collect(pool.imap_unordered(_run_task, tasks, chunksize=max(1, min(32, total // (workers * 8)))))
    return scene_out


def generate_catalog(
    out_dir: str | os.PathLike[str],
    n: int = 1000,
    size: int = 128,
    seed: int = 0,
    scenes: bool = False,
    *,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> SynthResult:
    """Draw a synthetic catalog into ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: output directory (created; existing files of the same names are replaced).
        n: number of product images.
        size: image side in pixels.
        seed: random seed; the same seed gives byte-identical files whatever the number of workers.
        scenes: also draw outfit scenes with COCO boxes.
        progress: called as ``progress(done, total)`` while images are drawn.
        **options: any other :class:`SynthOptions` field (``label_noise``, ``missing_rate``, ``workers``...).

    Returns:
        The paths written and counts of images, groups, labels, missing and noisy labels, scenes and boxes.

    Raises:
        VestisError: an unknown option, an option out of range, or an output path that is not a directory.
    """
    known = {f.name for f in fields(SynthOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise VestisError(f"synthetic catalog: unknown option(s) {unknown}; expected some of {sorted(known)}")
    opts = SynthOptions(n=n, size=size, seed=seed, scenes=scenes, **options)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VestisError(f"{out}: exists and is not a directory; expected an output directory")
    taxonomy = synthetic_taxonomy()
    items = plan_catalog(opts)
    ext = opts.image_format
    scene_specs = [sample_scene(opts, j) for j in range(opts.n_scenes)]
    scene_size = opts.scene_size or 2 * opts.size
    tasks = [
        ("item", it.index, (it.garment, it.params), str(out / "images" / f"{it.id}.{ext}"), opts.size, ext)
        for it in items
    ]
    width = max(6, len(str(len(scene_specs) - 1)))
    scene_names = [f"scene_{j:0{width}d}.{ext}" for j in range(len(scene_specs))]
    tasks += [
        ("scene", j, spec, str(out / "scenes" / "images" / scene_names[j]), scene_size, ext)
        for j, spec in enumerate(scene_specs)
    ]
    (out / "images").mkdir(parents=True, exist_ok=True)
    if scene_specs:
        (out / "scenes" / "images").mkdir(parents=True, exist_ok=True)
    # by default, no pool for a handful of images: starting one costs about a second
    workers = opts.workers or (min(2, os.cpu_count() or 1) if len(tasks) >= 100 else 1)
    scene_out = _run_all(tasks, workers, progress)

    meta = list(_META)
    observed, truth = [], []
    for it in items:
        m = {
            "background": "cluttered" if it.params.cluttered else "plain",
            "occluded": "yes" if it.params.occlusion else "no",
        }
        for rows, labels in ((observed, dict(it.labels)), (truth, it.garment.labels())):
            rows.append(Record(it.id, f"images/{it.id}.{ext}", labels, group=it.group, title=it.title, meta=m))
    manifest_path = write_manifest(Manifest(observed, list(taxonomy.names), meta, out), out / "manifest.csv")
    truth_path = write_manifest(Manifest(truth, list(taxonomy.names), meta, out), out / "ground_truth.csv")
    taxonomy_path = save_taxonomy(taxonomy, out / "taxonomy.yaml")

    annotations_path = None
    n_boxes = 0
    if scene_specs:
        annotations_path, n_boxes = _write_coco(out / "scenes", scene_specs, scene_names, scene_out, scene_size)

    n_labels = sum(len(it.labels) for it in items)
    n_truth = sum(len(it.garment.labels()) for it in items)
    n_noisy = sum(1 for it in items for k, v in it.labels.items() if it.garment.labels()[k] != v)
    return SynthResult(
        out_dir=out,
        manifest=manifest_path,
        ground_truth=truth_path,
        taxonomy=taxonomy_path,
        images_dir=out / "images",
        scenes_annotations=annotations_path,
        n_images=len(items),
        n_groups=len({it.group for it in items}),
        n_labels=n_labels,
        n_missing=n_truth - n_labels,
        n_noisy=n_noisy,
        n_scenes=len(scene_specs),
        n_boxes=n_boxes,
    )


def _write_coco(
    root: Path, specs: list[SceneSpec], names: list[str], results: dict[int, Any], size: int
) -> tuple[Path, int]:
    """COCO detection JSON; categories are the object types, each box also carries the garment's labels."""
    type_ids = {t: i + 1 for i, t in enumerate(HIERARCHY)}
    images, annotations = [], []
    for j, spec in enumerate(specs):
        images.append({"id": j + 1, "file_name": names[j], "width": size, "height": size})
        boxes, areas = results[j]
        for piece, box, area in zip(spec.pieces, boxes, areas, strict=True):
            if area == 0:
                continue
            object_type = next(t for t, cats in HIERARCHY.items() if piece.garment.category in cats)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": j + 1,
                    "category_id": type_ids[object_type],
                    "bbox": list(box),
                    "area": area,
                    "iscrowd": 0,
                    "attributes": {k: list(v) for k, v in piece.garment.labels().items()},
                }
            )
    categories = [{"id": i, "name": t, "supercategory": "garment"} for t, i in type_ids.items()]
    doc = {
        "info": {"description": "vestis synthetic outfit scenes; bbox is [x, y, w, h] in pixels, area in pixels"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    path = root / "annotations.json"
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path, len(annotations)
