"""Label statistics: IR, MeanIR and SCUMBLE against hand-computed cases and a naive reference; the written files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from vestis.data.manifest import Manifest, Record
from vestis.data.stats import compute_stats, imbalance_ratios, mean_ir, scumble, scumble_instance, write_stats
from vestis.data.taxonomy import Taxonomy

TAX = Taxonomy.from_dict(
    {
        "name": "toy",
        "category_attribute": "category",
        "attributes": [
            {"name": "category", "values": ["shirt", "trousers", "dress"]},
            {"name": "closure", "values": ["buttons", "zip"], "applies_to": ["trousers"]},
            {"name": "occasion", "kind": "multi", "values": ["casual", "party", "work", "formal"]},
        ],
    }
)


def _toy() -> Manifest:
    rows = [
        {"category": ("shirt",), "occasion": ("casual", "party")},
        {"category": ("shirt",), "occasion": ("casual",)},
        {"category": ("trousers",), "closure": ("zip",), "occasion": ("casual", "work")},
        {"category": ("trousers",), "closure": ("zip",), "occasion": ("casual", "party")},
        {"category": ("trousers",)},
        {"closure": ("buttons",)},  # unknown category: closure may apply
    ]
    splits = ["train", "train", "train", "val", "test", None]
    groups = ["g1", "g1", None, None, None, None]
    return Manifest(
        [
            Record(f"r{i}", f"r{i}.jpg", labels, group=g, split=s, line=i + 2)
            for i, (labels, s, g) in enumerate(zip(rows, splits, groups, strict=True))
        ],
        attributes=TAX.names,
    )


# --- the measures on their own ------------------------------------------------------------------------------------
def test_imbalance_ratios_and_mean_ir():
    # counts 4, 2, 1, 0: IR = 4/4, 4/2, 4/1, undefined; MeanIR = (1 + 2 + 4) / 3 = 7/3
    irs = imbalance_ratios({"casual": 4, "party": 2, "work": 1, "formal": 0})
    assert irs == {"casual": 1.0, "party": 2.0, "work": 4.0, "formal": None}
    assert mean_ir(irs) == pytest.approx(7 / 3)
    assert imbalance_ratios({}) == {}
    assert mean_ir({}) is None
    assert mean_ir({"a": None}) is None


def test_scumble_instance():
    # IRs 1 and 4: geometric mean sqrt(4) = 2, arithmetic mean 2.5 -> 1 - 2/2.5 = 0.2
    assert scumble_instance([1.0, 4.0]) == pytest.approx(0.2)
    # IRs 1, 2, 2: geometric mean 4^(1/3) = 1.5874011, arithmetic mean 5/3 -> 1 - 1.5874011/1.6666667 = 0.0475594
    assert scumble_instance([1.0, 2.0, 2.0]) == pytest.approx(0.0475594, abs=1e-7)
    assert scumble_instance([3.0]) == 0.0  # one label: nothing to be imbalanced against
    assert scumble_instance([]) == 0.0
    assert scumble_instance([2.5, 2.5, 2.5]) == pytest.approx(0.0, abs=1e-15)


def test_scumble_known_value():
    # labels of the rows and IR as in test_imbalance_ratios_and_mean_ir:
    #   {casual, party}: IRs (1, 2) -> 1 - sqrt(2)/1.5        = 0.0571910
    #   {casual}:        IRs (1)    -> 0
    #   {casual, work}:  IRs (1, 4) -> 1 - 2/2.5               = 0.2
    #   {casual, party}: IRs (1, 2) -> 0.0571910
    #   {}:              no label: not part of D
    # SCUMBLE = (2 * 0.0571910 + 0.2) / 4 = 0.55 - sqrt(2)/3 = 0.0785955
    irs = {"casual": 1.0, "party": 2.0, "work": 4.0, "formal": None}
    sets = [("casual", "party"), ("casual",), ("casual", "work"), ("casual", "party"), ()]
    assert scumble(sets, irs) == pytest.approx(0.55 - math.sqrt(2) / 3)
    assert scumble(sets, irs) == pytest.approx(0.0785955, abs=1e-7)
    assert scumble([(), ()], irs) is None
    # a value repeated in a row counts once; labels without an IR are ignored
    assert scumble([("work", "casual", "work", "unknown")], irs) == pytest.approx(0.2)


def test_balanced_set_has_mean_ir_one_and_scumble_zero():
    # three values, each in exactly two rows: every IR is 2/2 = 1
    tax = Taxonomy.from_dict({"attributes": [{"name": "tags", "kind": "multi", "values": ["a", "b", "c"]}]})
    recs = [Record(str(i), f"{i}.jpg", {"tags": t}) for i, t in enumerate([("a", "b"), ("b", "c"), ("a", "c")])]
    st = compute_stats(Manifest(recs, attributes=["tags"]), tax)["attributes"]["tags"]
    assert st["ir"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert st["mean_ir"] == 1.0
    assert st["scumble"] == 0.0


# --- compute_stats on the toy catalog -----------------------------------------------------------------------------
def test_counts_and_missing_rates():
    st = compute_stats(_toy(), TAX)
    assert st["rows"] == 6
    assert st["groups"] == 5  # r0 and r1 share g1
    assert st["splits"] == {"train": 3, "val": 1, "test": 1, "none": 1}
    cat, clo, occ = (st["attributes"][n] for n in ("category", "closure", "occasion"))
    assert cat["counts"] == {"shirt": 2, "trousers": 3, "dress": 0}
    assert clo["counts"] == {"buttons": 1, "zip": 2}
    assert occ["counts"] == {"casual": 4, "party": 2, "work": 1, "formal": 0}
    # category: 5 of 6 rows labelled, applies everywhere
    assert cat["missing_rate_applicable"] == pytest.approx(1 / 6)
    assert cat["missing_rate_all_rows"] == pytest.approx(1 / 6)
    # closure applies to the 3 trousers + the row of unknown category = 4 rows, 3 of them labelled
    assert clo["rows_applicable"] == 4
    assert clo["rows_labelled_applicable"] == 3
    assert clo["missing_rate_applicable"] == pytest.approx(1 - 3 / 4)
    assert clo["missing_rate_all_rows"] == pytest.approx(1 - 3 / 6)
    # occasion: 4 of 6 rows, 7 labels
    assert occ["missing_rate_applicable"] == pytest.approx(2 / 6)
    assert occ["labels_per_labelled_row"] == pytest.approx(7 / 4)


def test_imbalance_per_attribute():
    st = compute_stats(_toy(), TAX)
    cat, clo, occ = (st["attributes"][n] for n in ("category", "closure", "occasion"))
    # category: counts 2, 3, 0 -> IR 3/2, 3/3, undefined; MeanIR (1.5 + 1) / 2 = 1.25
    assert cat["ir"] == {"shirt": 1.5, "trousers": 1.0, "dress": None}
    assert cat["zero_count_values"] == ["dress"]
    assert cat["mean_ir"] == pytest.approx(1.25)
    assert cat["max_ir"] == 1.5
    # closure: counts 1, 2 -> IR 2, 1; MeanIR 1.5; single-label: SCUMBLE 0
    assert clo["ir"] == {"buttons": 2.0, "zip": 1.0}
    assert clo["mean_ir"] == pytest.approx(1.5)
    assert clo["scumble"] == 0.0
    # occasion: the case of test_scumble_known_value
    assert occ["mean_ir"] == pytest.approx(7 / 3)
    assert occ["scumble"] == pytest.approx(0.55 - math.sqrt(2) / 3)
    assert occ["scumble_rows"] == 4


def test_overall_flattened_label_set():
    o = compute_stats(_toy(), TAX)["overall"]
    # counts: shirt 2, trousers 3, dress 0, buttons 1, zip 2, casual 4, party 2, work 1, formal 0 -> max 4
    # IR: shirt 2, trousers 4/3, buttons 4, zip 2, casual 1, party 2, work 4 -> MeanIR (15 + 4/3) / 7 = 7/3
    assert o["mean_ir"] == pytest.approx(7 / 3)
    assert o["zero_count_labels"] == ["category=dress", "occasion=formal"]
    # per row: {shirt 2, casual 1, party 2}, {shirt 2, casual 1}, {trousers 4/3, zip 2, casual 1, work 4},
    # {trousers 4/3, zip 2, casual 1, party 2}, {trousers 4/3}, {buttons 4}
    # terms: 0.0475594, 0.0571910, 0.1325421, 0.0402076, 0, 0 -> mean 0.2775000 / 6 = 0.0462500
    rows = [
        1 - 4 ** (1 / 3) / (5 / 3),
        1 - 2 ** (1 / 2) / (3 / 2),
        1 - (32 / 3) ** (1 / 4) / (25 / 12),
        1 - (16 / 3) ** (1 / 4) / (19 / 12),
        0.0,
        0.0,
    ]
    assert o["scumble"] == pytest.approx(sum(rows) / 6)
    assert o["scumble"] == pytest.approx(0.0462500, abs=1e-7)


def test_cooccurrence():
    st = compute_stats(_toy(), TAX)["attributes"]
    occ = st["occasion"]["cooccurrence"]
    assert occ["kind"] == "value_by_value"
    assert occ["rows"] == occ["cols"] == ["casual", "party", "work", "formal"]
    assert occ["matrix"] == [[4, 2, 1, 0], [2, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    clo = st["closure"]["cooccurrence"]
    assert clo["kind"] == "category_by_value"
    assert clo["rows"] == ["shirt", "trousers", "dress"] and clo["cols"] == ["buttons", "zip"]
    assert clo["matrix"] == [[0, 0], [0, 2], [0, 0]]  # the buttons row has no category
    assert st["category"]["cooccurrence"] is None


def test_unknown_values_are_counted_apart():
    recs = [
        Record("a", "a.jpg", {"category": ("shirt",), "occasion": ("casual", "disco")}),
        Record("b", "b.jpg", {"category": ("skirt",), "closure": ("zip",)}),
    ]
    st = compute_stats(Manifest(recs, attributes=TAX.names), TAX)["attributes"]
    assert st["occasion"]["unknown_values"] == {"disco": 1}
    assert st["occasion"]["counts"]["casual"] == 1
    assert st["category"]["unknown_values"] == {"skirt": 1}
    # closure does not apply to the shirt; it may apply to the row of unknown category
    assert st["closure"]["rows_applicable"] == 1
    assert st["closure"]["missing_rate_applicable"] == 0.0


def test_empty_manifest():
    st = compute_stats(Manifest([], attributes=[]), TAX)
    occ = st["attributes"]["occasion"]
    assert occ["mean_ir"] is None and occ["scumble"] is None and occ["missing_rate_all_rows"] is None
    assert occ["zero_count_values"] == ["casual", "party", "work", "formal"]


# --- against a naive reference on random data ---------------------------------------------------------------------
def _naive(y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """IR, MeanIR and SCUMBLE from a binary (rows, labels) matrix, written straight from eqs 8-10."""
    counts = y.sum(axis=0)
    ir = np.where(counts > 0, counts.max() / np.maximum(counts, 1), np.nan)
    mean = np.nanmean(ir)
    terms = []
    for row in y.astype(bool):
        if not row.any():
            continue  # a row without labels is not part of D
        r = ir[row]
        terms.append(1 - np.prod(r) ** (1 / len(r)) / r.mean())
    return ir, mean, float(np.mean(terms))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_naive_reference(seed):
    rng = np.random.default_rng(seed)
    values = [f"v{j}" for j in range(7)]
    tax = Taxonomy.from_dict({"attributes": [{"name": "tags", "kind": "multi", "values": values}]})
    # skewed label frequencies, some empty rows, and the last value never used
    p = np.array([0.6, 0.3, 0.2, 0.1, 0.05, 0.02, 0.0])
    y = (rng.random((300, 7)) < p).astype(int)
    recs = [
        Record(str(i), f"{i}.jpg", {"tags": tuple(v for v, on in zip(values, row, strict=True) if on)})
        for i, row in enumerate(y)
    ]
    recs = [r for r in recs if r.labels["tags"]] + [Record("empty", "e.jpg")]
    st = compute_stats(Manifest(recs, attributes=["tags"]), tax)["attributes"]["tags"]
    ir, mean, scum = _naive(y)
    got = np.array([np.nan if st["ir"][v] is None else st["ir"][v] for v in values])
    np.testing.assert_allclose(got, ir, rtol=1e-12)
    assert st["zero_count_values"] == ["v6"]
    assert st["mean_ir"] == pytest.approx(mean, rel=1e-12)
    assert st["scumble"] == pytest.approx(scum, rel=1e-9)
    assert st["counts"] == {v: int(c) for v, c in zip(values, y.sum(axis=0), strict=True)}


# --- files ----------------------------------------------------------------------------------------------------------
def test_write_stats(tmp_path):
    tax = Taxonomy.from_dict(
        {
            "attributes": [
                {"name": "sleeve length", "values": ["short", "long"]},
                {"name": "sleeve_length", "values": ["a", "b"]},  # same file name after cleaning
            ]
        }
    )
    recs = [
        Record("a", "a.jpg", {"sleeve length": ("short",), "sleeve_length": ("a",)}),
        Record("b", "b.jpg", {"sleeve length": ("short",)}),
        Record("c", "c.jpg", {"sleeve length": ("long",)}),
    ]
    st = compute_stats(Manifest(recs, attributes=tax.names), tax)
    files = write_stats(st, tmp_path / "out")
    names = [f.name for f in files]
    assert names == [
        "stats.json",
        "stats.md",
        "missing_rate.png",
        "counts_sleeve_length.png",
        "counts_sleeve_length_2.png",
    ]
    assert json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8")) == st
    for f in files[2:]:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    md = (tmp_path / "out" / "stats.md").read_text(encoding="utf-8")
    # sleeve length: counts 2, 1 -> IR 1, 2, MeanIR 1.5; no missing label
    assert "| sleeve length | single | 3 | 0.0% | 0.0% | 1.500 | 2.000 | 0.000 |" in md
    # sleeve_length: one row labelled -> missing 2/3
    assert "| sleeve_length | single | 1 | 66.7% | 66.7% | 1.000 | 1.000 | 0.000 |" in md
    assert "| short | 2 | 1.00 |" in md and "| long | 1 | 2.00 |" in md
    assert "Values with no row (IR undefined): b." in md
    assert "![sleeve length counts](counts_sleeve_length.png)" in md
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temporary file
