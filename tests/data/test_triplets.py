from collections import Counter

import numpy as np
import pytest

from vestis.data.dataset import EncodedTargets
from vestis.data.taxonomy import Taxonomy
from vestis.data.triplets import (
    PKBatchSampler,
    _condition_seed,
    build_condition_triplets,
    build_triplets,
    default_batches,
    value_codes,
)
from vestis.errors import VestisError


def _random_codes(seed: int, n: int = 120, values: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, values, size=n)
    codes[rng.random(n) < 0.2] = -1
    codes[np.flatnonzero(codes == values - 1)[1:]] = -1  # the last value keeps a single row
    return codes


def test_value_codes_single_and_multi():
    tax = Taxonomy.from_dict(
        {
            "attributes": [
                {"name": "colour", "kind": "single", "values": ["red", "green", "blue"]},
                {"name": "occasion", "kind": "multi", "values": ["casual", "party", "work"]},
            ]
        }
    )
    enc = EncodedTargets(
        targets={
            "colour": np.array([2, -1, 0, 2, 1]),
            "occasion": np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0], [0, 1, 1], [1, 1, 0]], dtype=np.float32),
        },
        masks={"colour": np.array([1, 0, 1, 1, 1], bool), "occasion": np.array([1, 1, 0, 1, 1], bool)},
    )
    codes = value_codes(tax, enc)
    assert codes["colour"].tolist() == [2, -1, 0, 2, 1]
    # distinct vectors numbered by first appearance: {party, work} 0, {casual} 1, {casual, party} 2
    assert codes["occasion"].tolist() == [0, 1, -1, 0, 2]
    assert all(c.dtype == np.int64 for c in codes.values())
    with pytest.raises(VestisError, match="occasion"):
        value_codes(tax, EncodedTargets({"colour": enc.targets["colour"]}, {"colour": enc.masks["colour"]}))


def _check_triplets(codes: np.ndarray, trip: np.ndarray, category: np.ndarray | None = None) -> None:
    a, p, n = trip.T
    assert trip.dtype == np.int64 and trip.shape[1] == 3
    assert (codes[trip] >= 0).all()  # missing never used
    assert (codes[a] == codes[p]).all() and (a != p).all()
    assert (codes[n] != codes[a]).all()
    assert len({tuple(t) for t in trip.tolist()}) == len(trip)  # no duplicate triplets
    # the anchors: every labelled row with another row of its value (and category) and some other value, once
    labelled = codes >= 0
    expected = []
    for i in np.flatnonzero(labelled):
        partner = (codes == codes[i]) & (np.arange(len(codes)) != i)
        if category is not None:
            partner &= (category == category[i]) & (category[i] >= 0)
        if partner.any() and (labelled & (codes != codes[i])).any():
            expected.append(i)
    assert sorted(a.tolist()) == expected
    if category is not None:
        assert (category[a] == category[p]).all()


@pytest.mark.parametrize("seed", range(4))
def test_build_triplets_properties(seed):
    codes = _random_codes(seed)
    trip = build_triplets(codes, seed=seed)
    _check_triplets(codes, trip)
    assert np.array_equal(trip, build_triplets(codes, seed=seed))
    assert not np.array_equal(trip, build_triplets(codes, seed=seed + 100))
    # the single-row value is no anchor but can be a negative
    single = np.flatnonzero(codes == 4)
    assert len(single) == 1 and single[0] not in trip[:, 0]


@pytest.mark.parametrize("seed", range(4))
def test_build_triplets_same_category(seed):
    codes = _random_codes(seed)
    category = np.random.default_rng(seed + 1).integers(-1, 3, size=len(codes))
    trip = build_triplets(codes, seed=seed, category=category)
    _check_triplets(codes, trip, category)
    assert len(trip) < len(build_triplets(codes, seed=seed))


def test_negatives_without_replacement_and_refill():
    # value 0: 7 anchors, pool2 = 3 rows -> each pool2 row is a negative 2 or 3 times (refilled when exhausted)
    codes = np.array([0] * 7 + [1, 2, 2])
    trip = build_triplets(codes, seed=3)
    neg0 = Counter(trip[codes[trip[:, 0]] == 0, 2].tolist())
    assert set(neg0) == {7, 8, 9} and sorted(neg0.values()) == [2, 2, 3]
    # value 2: 2 anchors, pool2 of 8 rows -> two different negatives
    neg2 = trip[codes[trip[:, 0]] == 2, 2]
    assert len(neg2) == 2 and neg2[0] != neg2[1]
    # a larger pool: within a value no negative repeats while pool2 lasts
    codes = np.repeat(np.arange(4), [30, 40, 50, 60])
    trip = build_triplets(codes, seed=0)
    for v in range(4):
        neg = trip[codes[trip[:, 0]] == v, 2]
        assert len(np.unique(neg)) == len(neg)


def test_build_triplets_degenerate_inputs():
    assert build_triplets(np.array([-1, -1, -1]), seed=0).shape == (0, 3)
    assert build_triplets(np.array([0, 0, 0, -1]), seed=0).shape == (0, 3)  # one value: no negative
    assert build_triplets(np.array([0, 1, 2]), seed=0).shape == (0, 3)  # singletons: no positive
    assert build_triplets(np.array([], dtype=np.int64), seed=0).shape == (0, 3)
    with pytest.raises(VestisError, match="integer"):
        build_triplets(np.array([[0, 1]]), seed=0)
    with pytest.raises(VestisError, match="category"):
        build_triplets(np.array([0, 0, 1]), seed=0, category=np.array([0, 1]))


def test_build_condition_triplets_seeds_per_condition():
    codes = _random_codes(0)
    by_attr = {"colour": codes, "pattern": codes.copy()}
    trips = build_condition_triplets(by_attr, 7)
    assert list(trips) == ["colour", "pattern"]
    for t in trips.values():
        _check_triplets(codes, t)
    assert not np.array_equal(trips["colour"], trips["pattern"])  # the name enters the seed
    assert np.array_equal(trips["colour"], build_condition_triplets({"colour": codes}, 7)["colour"])
    assert np.array_equal(trips["colour"], build_triplets(codes, seed=_condition_seed(7, "colour")))
    # pinned: the derivation must not depend on the process (hash() of a str does)
    assert _condition_seed(7, "colour") == 4961491580478393357
    cat = np.random.default_rng(2).integers(0, 2, size=len(codes))
    _check_triplets(codes, build_condition_triplets(by_attr, 7, category=cat)["colour"], cat)


def _pk_codes() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 200
    colour = rng.integers(0, 10, size=n)
    colour[rng.random(n) < 0.1] = -1
    colour[np.flatnonzero(colour == 9)[3:]] = 8  # value 9: 3 rows (< K)
    return {
        "colour": colour,
        "constant": np.zeros(n, dtype=np.int64),  # one value: unusable
        "sparse": np.where(np.arange(n) < 5, np.arange(n), -1),  # five singletons: unusable
        "sleeve": rng.integers(0, 3, size=n),  # fewer values than P
    }


def test_pk_batches_composition_and_round_robin():
    codes = _pk_codes()
    s = PKBatchSampler(codes, p=4, k=4, batches=6, seed=0)
    assert s.conditions == ["colour", "sleeve"] and len(s) == 6
    batches = list(s)
    assert len(batches) == 6
    for b, batch in enumerate(batches):
        cond = ["colour", "sleeve"][b % 2]
        assert s.condition(b) == cond
        c = codes[cond][batch]
        counts = Counter(c.tolist())
        assert (c >= 0).all()
        assert len(counts) == (4 if cond == "colour" else 3)  # P values, or all of them
        assert set(counts.values()) == {4}  # K rows each
        for v in counts:
            rows = [i for i, x in zip(batch, c, strict=True) if x == v]
            n_rows = int((codes[cond] == v).sum())
            assert len(set(rows)) == min(4, n_rows)  # without replacement when possible
    s.set_epoch(1)  # the round-robin continues across epochs: 6 batches, so epoch 1 starts again at colour
    assert s.condition(0) == "colour"
    s3 = PKBatchSampler(codes, p=4, k=4, batches=3, seed=0)
    s3.set_epoch(1)
    assert s3.condition(0) == "sleeve"


def test_pk_value_with_fewer_rows_than_k_gives_all_its_rows():
    codes = {"colour": np.array([0, 0, 0, 0, 0, 1, 1, -1])}
    s = PKBatchSampler(codes, p=2, k=4, batches=5, seed=1)
    for batch in s:
        assert sorted(set(batch) & {5, 6}) == [5, 6]
        assert Counter(codes["colour"][batch].tolist()) == {0: 4, 1: 4}
        assert 7 not in batch


def test_pk_determinism_epochs_and_ranks():
    codes = _pk_codes()

    def run(epoch=0, rank=0, seed=0):
        s = PKBatchSampler(codes, p=4, k=4, batches=8, seed=seed, rank=rank, world_size=2)
        s.set_epoch(epoch)
        return list(s)

    assert run() == run()
    assert run(epoch=1) != run(epoch=0)
    assert run(epoch=1) == run(epoch=1)
    assert run(rank=1) != run(rank=0)
    assert run(seed=1) != run(seed=0)
    assert all(isinstance(i, int) for i in run()[0])


def test_pk_errors():
    codes = _pk_codes()
    with pytest.raises(VestisError, match="no attribute"):
        PKBatchSampler({"constant": codes["constant"], "sparse": codes["sparse"]}, p=2, k=2, batches=1, seed=0)
    with pytest.raises(VestisError, match="pk_values"):
        PKBatchSampler(codes, p=1, k=4, batches=1, seed=0)
    with pytest.raises(VestisError, match="pk_images"):
        PKBatchSampler(codes, p=4, k=1, batches=1, seed=0)
    with pytest.raises(VestisError, match="rank"):
        PKBatchSampler(codes, p=4, k=4, batches=1, seed=0, rank=2, world_size=2)
    with pytest.raises(VestisError, match="rows"):
        PKBatchSampler({"a": np.zeros(4, int), "b": np.zeros(5, int)}, p=2, k=2, batches=1, seed=0)


def test_default_batches():
    assert default_batches(100, 8, 4) == 4  # ceil(100 / 32)
    assert default_batches(96, 8, 4) == 3
    assert default_batches(1, 8, 4) == 1
    with pytest.raises(VestisError):
        default_batches(10, 0, 4)


def test_pk_sampler_drives_a_dataloader():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    codes = _pk_codes()
    s = PKBatchSampler(codes, p=4, k=2, batches=3, seed=5)
    loader = DataLoader(TensorDataset(torch.arange(200)), batch_sampler=s)
    assert len(loader) == 3
    assert [b[0].tolist() for b in loader] == list(s)
