"""Conditions, value codes, triplets and P x K batches for the attribute-aware embedding models.

Every taxonomy attribute is a condition (a notion of similarity). A row's value in a condition is its label: the
class index of a single-label attribute, the exact 0/1 vector of a multi-label one. :func:`value_codes` turns
:class:`~vestis.data.dataset.EncodedTargets` into one int64 code per row and condition, ``-1`` where the row has
no label; a row with code ``-1`` is never an anchor, a positive or a negative.

Two ways to form triplets:

* offline, :func:`build_triplets` / :func:`build_condition_triplets`, the multi-column paper's procedure
  ("Datasets and Triplets Building"): fixed triplets, used here to validate (triplet accuracy);
* online, :class:`PKBatchSampler`: batches of P values x K rows of one condition, from which the batch-hard loss
  (:func:`vestis.losses.batch_hard_triplet`) picks the hardest positive and negative of every anchor.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping

import numpy as np
from torch.utils.data import Sampler

from vestis.data.dataset import EncodedTargets
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError

__all__ = ["PKBatchSampler", "build_condition_triplets", "build_triplets", "default_batches", "value_codes"]


def value_codes(taxonomy: Taxonomy, encoded: EncodedTargets) -> dict[str, np.ndarray]:
    """One value code per row and condition.

    Args:
        taxonomy: the conditions, in order.
        encoded: targets and masks of the rows.

    Returns:
        ``{attribute: (N,) int64}``: the class index of a single-label attribute; for a multi-label attribute the
        distinct label vectors numbered in order of first appearance (two rows share a code iff their vectors are
        equal); ``-1`` where the row is not labelled.
    """
    out: dict[str, np.ndarray] = {}
    for attr in taxonomy:
        if attr.name not in encoded.targets or attr.name not in encoded.masks:
            raise VestisError(f"encoded targets: attribute {attr.name!r} missing; expected {taxonomy.names}")
        mask = np.asarray(encoded.masks[attr.name], dtype=bool)
        t = np.asarray(encoded.targets[attr.name])
        codes = np.full(len(mask), -1, dtype=np.int64)
        if attr.kind == "single":
            codes[mask] = t[mask]
        elif mask.any():
            _, first, inverse = np.unique(t[mask], axis=0, return_index=True, return_inverse=True)
            rank = np.empty(len(first), dtype=np.int64)
            rank[np.argsort(first)] = np.arange(len(first))  # sorted-vector id -> order of first appearance
            codes[mask] = rank[inverse.reshape(-1)]
        out[attr.name] = codes
    return out


def _as_codes(codes: np.ndarray, what: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(codes)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise VestisError(f"{what}: expected a 1-d array of integer codes, got shape {a.shape} of {a.dtype}")
    if n is not None and len(a) != n:
        raise VestisError(f"{what}: expected {n} rows (one per row of the codes), got {len(a)}")
    return a.astype(np.int64, copy=False)


def _positives(pool1: np.ndarray, category: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """(M, 2) [anchor, positive]: every pool1 row whose group has another row, a random other row of its group."""
    if category is None:
        groups = [pool1]
    else:  # DAtRNet: the positive shares the anchor's category too; an unknown category (-1) matches nothing
        cats = category[pool1]
        groups = [pool1[cats == c] for c in np.unique(cats[cats >= 0])]
    pairs = []
    for g in groups:
        n = len(g)
        if n < 2:
            continue
        # uniform over the group minus the anchor: draw among n - 1 slots and step over the anchor's own slot
        j = rng.integers(0, n - 1, size=n)
        j += j >= np.arange(n)
        pairs.append(np.stack([g, g[j]], axis=1))
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    out = np.concatenate(pairs)
    return out[np.argsort(out[:, 0], kind="stable")]


def _refilled_draw(m: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` positions in ``[0, size)`` drawn without replacement, the pool refilled each time it runs out."""
    full, rest = divmod(m, size)
    parts = [rng.permutation(size) for _ in range(full)]
    parts.append(rng.choice(size, size=rest, replace=False))
    return np.concatenate(parts).astype(np.int64)


def build_triplets(codes: np.ndarray, *, seed: int, category: np.ndarray | None = None) -> np.ndarray:
    """Triplets of one condition, as the multi-column paper builds them.

    For each value ``v``: pool1 = the rows with ``v``, pool2 = the rows with another value. Every pool1 row is
    an anchor exactly once; its positive is drawn at random from pool1 without the anchor (and stays there), its
    negative is drawn from pool2 without replacement. When a value has more anchors than pool2 has rows, pool2 is
    refilled each time it runs out, so each pool2 row is a negative ``floor(m / |pool2|)`` or ``ceil(...)`` times.
    A value held by a single row has no positive and yields no triplet, nor does a condition with one value
    (no negative). As every row has one value, every anchor appears in one triplet only, so no two triplets are
    identical (the paper's requirement) by construction.

    Args:
        codes: (N,) value codes, ``-1`` for unlabelled rows (never used).
        seed: seed of the numpy generator; the same seed gives the same triplets.
        category: DAtRNet's option, (N,) category codes: the positive must also share the anchor's category;
            anchors without such a row (or without a category, ``-1``) are skipped.

    Returns:
        (M, 3) int64 ``[anchor, positive, negative]`` row indices, sorted by value then anchor.
    """
    codes = _as_codes(codes, "codes")
    if category is not None:
        category = _as_codes(category, "category", len(codes))
    rng = np.random.default_rng(seed)
    order = np.argsort(codes, kind="stable")
    labelled = order[codes[order] >= 0]  # (L,) rows grouped by value, ascending within a value
    _, starts, counts = np.unique(codes[labelled], return_index=True, return_counts=True)
    out = []
    for s, c in zip(starts.tolist(), counts.tolist(), strict=True):
        size2 = len(labelled) - c  # pool2 = labelled without the block [s, s + c)
        if c < 2 or size2 == 0:
            continue
        ap = _positives(labelled[s : s + c], category, rng)  # (M, 2)
        if not len(ap):
            continue
        pos = _refilled_draw(len(ap), size2, rng)  # positions in pool2
        negatives = labelled[np.where(pos < s, pos, pos + c)]  # step over the pool1 block
        out.append(np.concatenate([ap, negatives[:, None]], axis=1))
    return np.concatenate(out) if out else np.empty((0, 3), dtype=np.int64)


def _condition_seed(seed: int, name: str) -> int:
    # hashlib, not hash(): str hashes change from one Python process to the next
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def build_condition_triplets(
    codes_by_attr: Mapping[str, np.ndarray], seed: int, category: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """:func:`build_triplets` for every condition, each with its own seed derived from ``seed`` and its name.

    Args:
        codes_by_attr: ``{attribute: (N,) codes}`` (see :func:`value_codes`).
        seed: the base seed; a condition's triplets depend only on it, the name and the codes.
        category: optional (N,) category codes (DAtRNet's same-category positives).

    Returns:
        ``{attribute: (M, 3) int64}``, in the order of ``codes_by_attr``.
    """
    return {
        name: build_triplets(codes, seed=_condition_seed(seed, name), category=category)
        for name, codes in codes_by_attr.items()
    }


def default_batches(n_rows: int, p: int, k: int) -> int:
    """Batches of ``p * k`` rows that cover ``n_rows`` rows once on average: ``ceil(n_rows / (p * k))``."""
    if p < 1 or k < 1:
        raise VestisError(f"P x K batches: expected p >= 1 and k >= 1, got p={p}, k={k}")
    return math.ceil(n_rows / (p * k))


class PKBatchSampler(Sampler[list[int]]):
    """Batches of P values x K rows of one condition, for online batch-hard triplet mining.

    Batch ``b`` of epoch ``e`` belongs to the condition ``(e * batches + b) mod C`` of the C usable conditions
    (those with at least two values held by two rows or more), so every condition gets an equal share of the
    batches over the epochs, as the multi-column paper samples "for each attribute type, in equal proportions".
    It holds P values of that condition drawn uniformly among those with two rows or more (all of them when fewer
    than P) and K rows of each, without replacement; a value with fewer than K rows gives all its rows, then as
    many again, until K. Rows unlabelled in the condition are never drawn for it.

    Args:
        codes_by_attr: ``{attribute: (N,) codes}`` over the dataset's rows (see :func:`value_codes`).
        p: values per batch (``train.pk_values``), at least 2 (a negative needs another value).
        k: rows per value (``train.pk_images``), at least 2 (a positive needs another row).
        batches: batches per epoch on this process (``len(sampler)``).
        seed: base seed; the stream of batches depends on it, the process's rank and the epoch only.
        rank: this process's rank; each rank draws its own stream (the condition of step ``b`` is the same on
            every rank, so one optimiser step mixes the same condition).
        world_size: the number of processes.
    """

    def __init__(
        self,
        codes_by_attr: Mapping[str, np.ndarray],
        *,
        p: int,
        k: int,
        batches: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if p < 2:
            raise VestisError(f"train.pk_values: expected >= 2 values per batch (a negative needs one), got {p}")
        if k < 2:
            raise VestisError(f"train.pk_images: expected >= 2 images per value (a positive needs one), got {k}")
        if batches < 1:
            raise VestisError(f"P x K batches: expected >= 1 batch per epoch, got {batches}")
        if not 0 <= rank < world_size:
            raise VestisError(f"P x K batches: rank {rank} outside [0, {world_size})")
        self.p, self.k, self.batches = int(p), int(k), int(batches)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self.groups: dict[str, list[np.ndarray]] = {}  # condition -> rows of each value with >= 2 rows
        n = None
        for name, codes in codes_by_attr.items():
            codes = _as_codes(codes, f"codes of {name}", n)
            n = len(codes)
            order = np.argsort(codes, kind="stable")
            labelled = order[codes[order] >= 0]
            _, starts, counts = np.unique(codes[labelled], return_index=True, return_counts=True)
            groups = [labelled[s : s + c] for s, c in zip(starts, counts, strict=True) if c >= 2]
            if len(groups) >= 2:
                self.groups[name] = groups
        self.conditions = list(self.groups)
        if not self.conditions:
            raise VestisError(
                f"P x K batches: no attribute of {list(codes_by_attr)} has two values with two labelled rows each; "
                "an embedding model needs at least one"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's stream (call before iterating, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches

    def condition(self, batch: int) -> str:
        """The condition of batch ``batch`` of the current epoch."""
        return self.conditions[(self.epoch * self.batches + batch) % len(self.conditions)]

    def __iter__(self) -> Iterator[list[int]]:
        # independent streams per (rank, epoch), numpy's recommended way to split one seed
        ss = np.random.SeedSequence(self.seed % 2**64, spawn_key=(self.rank, self.epoch))
        rng = np.random.default_rng(ss)
        for b in range(self.batches):
            groups = self.groups[self.condition(b)]
            chosen = rng.choice(len(groups), size=min(self.p, len(groups)), replace=False)
            rows = []
            for v in chosen.tolist():
                g = groups[v]
                if len(g) >= self.k:
                    rows.append(rng.choice(g, size=self.k, replace=False))
                else:
                    rows.append(np.concatenate([rng.permutation(g) for _ in range(-(-self.k // len(g)))])[: self.k])
            yield np.concatenate(rows).tolist()
