"""Deterministic, group-aware train/val/test splits.

Every group (all colour variants of one product; the id when there is no group) lands in exactly one
split. Groups are ordered by a seeded hash of their key and cut at the requested fractions of *items*,
so the assignment depends only on (seed, group keys), not on row order, and adding rows moves few groups.
Rows that already carry a ``split`` keep it, and the other rows of their group follow them.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from vestis.data.manifest import SPLITS, Manifest, Record
from vestis.errors import VestisError

__all__ = ["assign_splits", "split_manifest"]


def _rank(seed: int, key: str) -> str:
    return hashlib.sha1(f"{seed}\x00{key}".encode()).hexdigest()


def assign_splits(
    records: list[Record], *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> dict[str, str]:
    """Map every record id to ``train``, ``val`` or ``test``."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise VestisError(f"split fractions val={val_fraction} test={test_fraction}: expected >= 0 with a sum < 1")
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.group_key].append(r)
    out: dict[str, str] = {}
    free: list[str] = []
    for key, rows in groups.items():
        given = {r.split for r in rows if r.split}
        if len(given) > 1:
            raise VestisError(f"group {key!r} spans splits {sorted(given)}: a group must stay in one split")
        if given:
            s = given.pop()
            out.update((r.id, s) for r in rows)
        else:
            free.append(key)
    total = sum(len(groups[k]) for k in free)
    n_test = round(total * test_fraction)
    n_val = round(total * val_fraction)
    seen = 0
    for key in sorted(free, key=lambda k: _rank(seed, k)):
        # test first, then val, the rest train: cut on cumulative item counts
        s = "test" if seen < n_test else "val" if seen < n_test + n_val else "train"
        for r in groups[key]:
            out[r.id] = s
        seen += len(groups[key])
    return out


def split_manifest(
    manifest: Manifest, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> dict[str, Manifest]:
    """``{"train": ..., "val": ..., "test": ...}`` sub-manifests (see :func:`assign_splits`)."""
    where = assign_splits(manifest.records, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    return {s: manifest.subset([r for r in manifest.records if where[r.id] == s]) for s in SPLITS}
