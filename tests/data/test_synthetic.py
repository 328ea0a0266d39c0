"""The synthetic catalog: determinism, valid labels, groups, the noise knobs, ROI sizes and scene boxes."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vestis.data.manifest import read_manifest
from vestis.data.synthetic import (
    HIERARCHY,
    Garment,
    RenderParams,
    SynthOptions,
    generate_catalog,
    occasion_of,
    plan_catalog,
    render_item,
    render_scene,
    sample_scene,
    synthetic_taxonomy,
)
from vestis.data.taxonomy import load_taxonomy, save_taxonomy
from vestis.errors import VestisError

TAX = synthetic_taxonomy()
SMALL = ("neckline", "sleeve", "closure", "pocket", "logo")
LARGE = ("category", "colour", "pattern", "length", "occasion")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cat"
    generate_catalog(out, n=60, size=64, seed=3, workers=1, label_noise=0.2, missing_rate=0.2)
    return out


# --- taxonomy ---------------------------------------------------------------------------------------------
def test_taxonomy_structure_and_roundtrip(tmp_path):
    assert list(TAX.hierarchy) == ["upper body", "lower body", "full body", "footwear"]
    assert all(len(cats) >= 2 for cats in TAX.hierarchy.values())
    assert sorted(c for cats in TAX.hierarchy.values() for c in cats) == sorted(TAX.categories)
    assert TAX.category_attribute == "category"
    assert {a.name: a.roi for a in TAX} == {**dict.fromkeys(SMALL, "small"), **dict.fromkeys(LARGE, "large")}
    assert [a.name for a in TAX if a.kind == "multi"] == ["occasion"]
    assert TAX["pattern"].values == ("solid", "striped", "checked", "dotted", "floral")
    assert TAX["closure"].values == ("none", "buttons", "zip")
    # applies_to: necklines and sleeves on upper and full body only, lengths on lower and full body only
    tops = set(HIERARCHY["upper body"]) | set(HIERARCHY["full body"])
    assert set(TAX["neckline"].applies_to) == set(TAX["sleeve"].applies_to) == tops
    assert set(TAX["length"].applies_to) <= set(HIERARCHY["lower body"]) | set(HIERARCHY["full body"])
    assert not set(TAX["pattern"].applies_to) & set(HIERARCHY["footwear"])
    save = tmp_path / "t.yaml"
    save_taxonomy(TAX, save)
    assert load_taxonomy(save).to_dict() == TAX.to_dict()


# --- determinism ------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    kw = {"n": 16, "size": 48, "workers": 1, "scenes": True, "scene_count": 2}
    generate_catalog(tmp_path / "a", seed=5, **kw)
    generate_catalog(tmp_path / "b", seed=5, **kw)
    generate_catalog(tmp_path / "c", seed=6, **kw)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 16 + 2 + 4  # images, scenes, manifest + ground truth + taxonomy + annotations
    assert a == b
    assert a["manifest.csv"] != c["manifest.csv"]
    assert a["images/000000.jpg"] != c["images/000000.jpg"]


def test_output_does_not_depend_on_workers(tmp_path):
    generate_catalog(tmp_path / "one", n=12, size=40, seed=2, workers=1, image_format="png")
    generate_catalog(tmp_path / "two", n=12, size=40, seed=2, workers=2, image_format="png")
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_knobs_change_only_what_they_control():
    """Noise and missing labels come from their own streams: the garments and the shots stay the same
    (clutter changes only the background: its tone and the extra sensor noise of a busy scene)."""
    base = plan_catalog(SynthOptions(n=40, seed=1, label_noise=0.0, missing_rate=0.0))
    other = plan_catalog(SynthOptions(n=40, seed=1, label_noise=0.4, missing_rate=0.3, clutter=1.0))
    assert [i.garment for i in base] == [i.garment for i in other]
    assert [i.title for i in base] == [i.title for i in other]
    assert [replace(i.params, cluttered=False, tone=(0, 0, 0), noise=0.0) for i in base] == [
        replace(i.params, cluttered=False, tone=(0, 0, 0), noise=0.0) for i in other
    ]
    assert all(i.params.cluttered for i in other)
    assert [i.labels for i in base] != [i.labels for i in other]


# --- the written catalog ----------------------------------------------------------------------------------
def test_manifest_is_valid_against_the_taxonomy(catalog):
    m = read_manifest(catalog / "manifest.csv")
    truth = {r.id: r for r in read_manifest(catalog / "ground_truth.csv")}
    tax = load_taxonomy(catalog / "taxonomy.yaml")
    assert m.problems == []
    assert len(m) == 60
    assert m.attributes == tax.names
    assert m.meta_columns == ["background", "occluded"]
    for r in m:
        assert r.split is None and r.group and r.title
        cat = r.labels["category"][0]
        assert cat in tax.categories
        for name, values in r.labels.items():
            attr = tax[name]
            assert set(values) <= set(attr.values), (r.id, name, values)
            assert len(values) == 1 or attr.kind == "multi"
            assert attr.applies(cat), (r.id, name, cat)
        # the ground truth labels every applicable attribute and nothing else
        t = truth[r.id]
        assert {a.name for a in tax if a.applies(cat)} == set(t.labels)
        assert t.labels["category"] == r.labels["category"]
        with Image.open(catalog / r.image) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 64))


def test_colour_variants_share_a_group_and_differ_in_colour_only(catalog):
    groups: dict[str, list] = defaultdict(list)
    for r in read_manifest(catalog / "ground_truth.csv"):
        groups[r.group].append(r)
    sizes = Counter(len(v) for v in groups.values())
    assert set(sizes) <= {1, 2, 3}
    assert sizes[2] + sizes[3] > 0
    for records in groups.values():
        colours = [r.labels["colour"] for r in records]
        assert len(set(colours)) == len(colours)
        designs = [{k: v for k, v in r.labels.items() if k != "colour"} for r in records]
        assert all(d == designs[0] for d in designs)
    # ids are consecutive within a group, so variants sit together
    ids = [[int(r.id) for r in v] for v in groups.values()]
    assert all(g == list(range(g[0], g[0] + len(g))) for g in ids)


def _label_stats(opts: SynthOptions) -> tuple[int, int, int, int]:
    """(eligible labels, missing, present, wrong among present), category excluded."""
    eligible = missing = present = wrong = 0
    for item in plan_catalog(opts):
        for name, value in item.garment.labels().items():
            if name == "category":
                assert item.labels[name] == value  # never noised nor dropped
                continue
            eligible += 1
            if name not in item.labels:
                missing += 1
            else:
                present += 1
                wrong += item.labels[name] != value
    return eligible, missing, present, wrong


def test_missing_rate_drops_that_fraction_of_labels():
    # n=200 items hold ~1,200 eligible labels: the standard error of the fraction is sqrt(.25/1200) = 0.0144,
    # so +-0.05 is about 3.5 standard errors (and the seed is fixed, so the test is not flaky either way)
    eligible, missing, _, wrong = _label_stats(SynthOptions(n=200, seed=0, missing_rate=0.5))
    assert eligible > 1000
    assert abs(missing / eligible - 0.5) < 0.05
    assert wrong == 0
    assert _label_stats(SynthOptions(n=200, seed=0, missing_rate=0.0))[1] == 0
    # the same uniforms decide: what is missing at 0.2 is also missing at 0.5
    lo, hi = plan_catalog(SynthOptions(n=50, missing_rate=0.2)), plan_catalog(SynthOptions(n=50, missing_rate=0.5))
    assert all(set(b.labels) <= set(a.labels) for a, b in zip(lo, hi, strict=True))


def test_label_noise_corrupts_that_fraction_with_allowed_values():
    eligible, missing, present, wrong = _label_stats(SynthOptions(n=200, seed=0, label_noise=0.3, missing_rate=0))
    assert missing == 0 and present == eligible
    assert abs(wrong / present - 0.3) < 0.05  # same standard-error argument as for the missing rate
    assert _label_stats(SynthOptions(n=200, seed=0, label_noise=0.0, missing_rate=0))[3] == 0
    for item in plan_catalog(SynthOptions(n=200, seed=0, label_noise=1.0, missing_rate=0)):
        cat = item.garment.category
        for name, values in item.labels.items():
            assert TAX[name].applies(cat) and set(values) <= set(TAX[name].values) and values
            if name != "category":
                assert values != item.garment.labels()[name]


def test_imbalance_is_a_zipf_law_over_the_value_order():
    def top_share(a: float) -> float:
        designs = {i.group: i.garment.category for i in plan_catalog(SynthOptions(n=300, seed=4, imbalance=a))}
        return Counter(designs.values())[TAX["category"].values[0]] / len(designs)

    k = len(TAX.categories)
    expected = 1 / sum((i + 1) ** -2.0 for i in range(k))  # Zipf(2) mass of the first of 11 values: 0.64
    assert abs(top_share(2.0) - expected) < 0.12  # ~150 designs: standard error 0.04
    assert abs(top_share(0.0) - 1 / k) < 0.07  # balanced: 0.09, standard error 0.023


def test_variant_colours_stay_distinct_under_extreme_imbalance():
    items = plan_catalog(SynthOptions(n=60, imbalance=10.0, max_variants=10))
    groups: dict[str, list[str]] = defaultdict(list)
    for i in items:
        groups[i.group].append(i.garment.colour)
    assert all(len(set(c)) == len(c) for c in groups.values())
    # the first colour of every group is the most common one: 1 / 2**10 of the mass goes elsewhere
    assert sum(c[0] == TAX["colour"].values[0] for c in groups.values()) >= len(groups) - 1


def test_occasion_rules_on_hand_made_designs():
    shirt = Garment("shirt", "navy", pattern="solid", neckline="collar", sleeve="long", closure="buttons", pocket="no")
    assert occasion_of(shirt) == ("formal",)
    assert occasion_of(replace(shirt, pattern="checked")) == ("casual",)
    assert occasion_of(Garment("sneaker", "white", logo="star")) == ("sport",)
    assert occasion_of(Garment("sneaker", "white", logo="none")) == ("casual", "sport")
    dress = Garment("dress", "red", pattern="floral", length="short", neckline="round", sleeve="short")
    assert occasion_of(dress) == ("casual", "party")
    assert occasion_of(Garment("t-shirt", "red", pattern="solid", logo="none")) == ("casual",)
    # without flips the manifest's occasions are exactly the rules; with the default 5 % most still are
    items = plan_catalog(SynthOptions(n=120, occasion_flip=0.0, missing_rate=0.0))
    assert all(i.labels["occasion"] == occasion_of(i.garment) for i in items)
    items = plan_catalog(SynthOptions(n=120, missing_rate=0.0))
    agree = sum(i.labels["occasion"] == occasion_of(i.garment) for i in items) / len(items)
    assert 0.7 < agree < 1.0


def test_titles_are_weak_labels():
    items = plan_catalog(SynthOptions(n=200, title_typos=0.0))
    words = {
        "t-shirt": ("T-Shirt", "Tshirt", "Tee"),
        "shirt": ("Shirt",),
        "sweater": ("Sweater", "Pullover", "Jumper"),
        "trousers": ("Trousers", "Pants", "Chinos"),
        "sneaker": ("Sneakers", "Casual Shoes", "Trainers"),
        "boot": ("Boots",),
    }
    hits = [any(w in i.title for w in words[i.garment.category]) for i in items if i.garment.category in words]
    assert 0.85 < sum(hits) / len(hits) < 1.0  # the noun is there 95 % of the time: omitted sometimes
    typo = plan_catalog(SynthOptions(n=200, title_typos=1.0))
    assert sum(a.title != b.title for a, b in zip(items, typo, strict=True)) > 150


# --- pixels: small cues are small, large ones large ---------------------------------------------------------
SHOT = RenderParams(rotation=6.0, offset=(0.03, -0.02))
SHIRT = Garment(
    "t-shirt", "navy", pattern="solid", neckline="round", sleeve="short", pocket="no", logo="none", design_seed=5
)


def _changed(a: Garment, b: Garment, size: int = 64) -> np.ndarray:
    x = np.asarray(render_item(a, SHOT, size), dtype=np.int16)
    y = np.asarray(render_item(b, SHOT, size), dtype=np.int16)
    return np.abs(x - y).max(axis=-1) > 8  # (H, W): visibly different pixels


@pytest.mark.parametrize(
    ("change", "low", "high"),
    [
        ({"pocket": "yes"}, 0.003, 0.05),
        ({"neckline": "v"}, 0.003, 0.05),
        ({"neckline": "collar"}, 0.003, 0.05),
        ({"logo": "star"}, 0.003, 0.05),
        ({"sleeve": "sleeveless"}, 0.01, 0.12),  # the largest of the small cues (the paper calls it small)
        ({"pattern": "striped"}, 0.3, 1.0),
        ({"pattern": "checked"}, 0.3, 1.0),
        ({"colour": "red"}, 0.4, 1.0),
    ],
)
def test_roi_sizes(change, low, high):
    frac = _changed(SHIRT, replace(SHIRT, **change)).mean()
    assert low < frac < high


def test_small_cues_are_local_and_patterns_spread_over_the_garment():
    def spread(mask: np.ndarray) -> float:  # bounding box of the changed pixels, as a fraction of the image
        ys, xs = np.nonzero(mask)
        return (np.ptp(xs) + 1) * (np.ptp(ys) + 1) / mask.size

    assert spread(_changed(SHIRT, replace(SHIRT, pocket="yes"))) < 0.05
    assert spread(_changed(SHIRT, replace(SHIRT, logo="diamond"))) < 0.05
    assert spread(_changed(SHIRT, replace(SHIRT, pattern="dotted"))) > 0.4
    trousers = Garment("trousers", "grey", pattern="solid", length="long", closure="none", pocket="no")
    assert spread(_changed(trousers, replace(trousers, closure="zip"))) < 0.05
    assert spread(_changed(trousers, replace(trousers, length="knee"))) > 0.3


def test_render_is_deterministic_and_shots_differ():
    a = np.asarray(render_item(SHIRT, SHOT, 48))
    assert np.array_equal(a, np.asarray(render_item(SHIRT, SHOT, 48)))
    busy = replace(SHOT, cluttered=True, noise=4.0, occlusion=(0.1, 0.1, 0.3, 0.3), seed=9)
    b = np.asarray(render_item(SHIRT, busy, 48))
    assert a.shape == b.shape == (48, 48, 3)
    assert not np.array_equal(a, b)


# --- scenes -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_scene_boxes_are_tight_around_each_drawn_garment(index):
    size = 96
    spec = sample_scene(SynthOptions(seed=11, clutter=0.5), index)
    boxes = render_scene(spec, size).boxes
    assert 2 <= len(spec.pieces) <= 3
    plain = RenderParams(tone=(255, 255, 255))
    empty = np.asarray(render_scene(replace(spec, pieces=(), params=plain), size).image, dtype=np.int16)
    for piece, (x, y, w, h) in zip(spec.pieces, boxes, strict=True):
        alone = render_scene(replace(spec, pieces=(piece,), params=plain), size).image
        drawn = np.abs(np.asarray(alone, dtype=np.int16) - empty).max(axis=-1) > 0  # (H, W) this garment's pixels
        ys, xs = np.nonzero(drawn)
        assert len(xs) > 0.01 * size * size
        # every drawn pixel is inside the box...
        assert x <= xs.min() and xs.max() < x + w and y <= ys.min() and ys.max() < y + h
        # ...and the box is no larger than the drawing (a pixel of slack for edges blended to near zero)
        assert xs.min() - x <= 1 and x + w - 1 - xs.max() <= 1 and ys.min() - y <= 1 and y + h - 1 - ys.max() <= 1
    # garments never overlap
    for a, b in combinations(boxes, 2):
        assert a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]


def test_scene_annotations_are_coco(tmp_path):
    res = generate_catalog(tmp_path, n=4, size=32, workers=1, scenes=True, scene_count=3)
    doc = json.loads((tmp_path / "scenes" / "annotations.json").read_text())
    assert res.scenes_annotations == tmp_path / "scenes" / "annotations.json"
    assert [c["name"] for c in doc["categories"]] == list(HIERARCHY)
    assert [im["id"] for im in doc["images"]] == [1, 2, 3]
    assert res.n_scenes == 3 and res.n_boxes == len(doc["annotations"]) >= 6
    by_id = {c["id"]: c["name"] for c in doc["categories"]}
    for im in doc["images"]:
        assert im["width"] == im["height"] == 64  # scenes are twice the product size by default
        with Image.open(tmp_path / "scenes" / "images" / im["file_name"]) as f:
            assert f.size == (64, 64)
    for ann in doc["annotations"]:
        x, y, w, h = ann["bbox"]
        assert ann["iscrowd"] == 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
        assert 0 < ann["area"] <= w * h
        category = ann["attributes"]["category"][0]
        assert category in HIERARCHY[by_id[ann["category_id"]]]


# --- options ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"n": 0}, "n: expected a positive integer, got 0"),
        ({"size": 16}, "size: expected an integer >= 32, got 16"),
        ({"missing_rate": 1.5}, "missing_rate: expected a probability between 0 and 1, got 1.5"),
        ({"label_noise": -0.1}, "label_noise: expected a probability between 0 and 1, got -0.1"),
        ({"imbalance": -1.0}, "imbalance: expected a Zipf exponent between 0 and 10, got -1.0"),
        ({"max_variants": 11}, "max_variants: expected at most 10 .the number of colours., got 11"),
        ({"image_format": "gif"}, "image_format: expected 'jpg' or 'png', got 'gif'"),
        ({"workers": 0}, "workers: expected a positive integer, got 0"),
    ],
)
def test_bad_options_are_refused(kw, message):
    with pytest.raises(VestisError, match=message.replace("(", r"\(")):
        SynthOptions(**kw)


def test_generate_refuses_unknown_options_and_a_file_as_output(tmp_path):
    with pytest.raises(VestisError, match=r"unknown option\(s\) \['noise'\]"):
        generate_catalog(tmp_path / "x", n=2, noise=0.1)
    (tmp_path / "f").write_text("x")
    with pytest.raises(VestisError, match="not a directory"):
        generate_catalog(tmp_path / "f", n=2)


def test_result_counts_match_the_files(catalog):
    m = read_manifest(catalog / "manifest.csv")
    truth = {r.id: r for r in read_manifest(catalog / "ground_truth.csv")}
    n_labels = sum(len(r.labels) for r in m)
    n_truth = sum(len(r.labels) for r in truth.values())
    n_noisy = sum(v != truth[r.id].labels[k] for r in m for k, v in r.labels.items())
    # regenerate into another folder with the same options: the counts describe these very files
    res = generate_catalog(
        catalog.parent / "again", n=60, size=64, seed=3, workers=1, label_noise=0.2, missing_rate=0.2
    )
    assert (res.n_images, res.n_labels, res.n_missing, res.n_noisy) == (60, n_labels, n_truth - n_labels, n_noisy)
    assert res.n_groups == len({r.group for r in m})
    assert res.n_noisy > 0 and res.n_missing > 0
    assert math.isclose(res.n_missing / (n_truth - 60), 0.2, abs_tol=0.07)
