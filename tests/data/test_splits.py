import pytest

from vestis.data.manifest import Manifest, Record
from vestis.data.splits import assign_splits, split_manifest
from vestis.errors import VestisError


def _records(n_groups: int, per_group: int = 3) -> list[Record]:
    return [Record(id=f"{g}-{i}", image="x.jpg", group=f"g{g}") for g in range(n_groups) for i in range(per_group)]


def test_groups_never_span_splits_and_fractions_hold():
    recs = _records(200)
    where = assign_splits(recs, val_fraction=0.1, test_fraction=0.2, seed=7)
    by_group: dict[str, set[str]] = {}
    for r in recs:
        by_group.setdefault(r.group, set()).add(where[r.id])
    assert all(len(s) == 1 for s in by_group.values())
    counts = {s: sum(1 for v in where.values() if v == s) for s in ("train", "val", "test")}
    # cuts fall on group boundaries (3 items each): within one group of the target
    assert abs(counts["test"] - 120) <= 3 and abs(counts["val"] - 60) <= 3
    assert sum(counts.values()) == 600


def test_deterministic_and_order_independent():
    recs = _records(50)
    a = assign_splits(recs, seed=1)
    b = assign_splits(list(reversed(recs)), seed=1)
    assert a == b
    assert a != assign_splits(recs, seed=2)


def test_ungrouped_rows_split_by_id_and_given_splits_are_kept():
    recs = [Record(id=str(i), image="x.jpg") for i in range(100)]
    recs[0].split = "test"
    recs[1].split = "train"
    where = assign_splits(recs, val_fraction=0.5, test_fraction=0.0, seed=0)
    assert where["0"] == "test" and where["1"] == "train"
    assert sum(v == "val" for v in where.values()) == 49  # half of the 98 free rows


def test_group_members_follow_a_given_split():
    recs = _records(2)
    recs[0].split = "val"
    where = assign_splits(recs, val_fraction=0.0, test_fraction=0.0)
    assert [where[r.id] for r in recs[:3]] == ["val"] * 3
    recs[1].split = "test"
    with pytest.raises(VestisError, match="spans splits"):
        assign_splits(recs)


def test_split_manifest_partitions():
    m = Manifest(_records(30), attributes=[])
    parts = split_manifest(m, val_fraction=0.2, test_fraction=0.2)
    ids = [r.id for p in parts.values() for r in p.records]
    assert sorted(ids) == sorted(r.id for r in m.records)


def test_bad_fractions():
    with pytest.raises(VestisError, match="split fractions"):
        assign_splits(_records(2), val_fraction=0.6, test_fraction=0.5)
