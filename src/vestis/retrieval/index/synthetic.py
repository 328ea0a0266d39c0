"""Synthetic catalog vectors with the layout of real attribute-aware embeddings, for index tests and benchmarks.

Each attribute ``t`` has ``values`` prototype directions in its ``d_t`` dimensions; an item draws one value per
attribute and its sub-embedding is that prototype plus Gaussian noise, normalised. The concatenation then has
the structure of a trained model's output: items sharing many attribute values are near neighbours, ties between
them are broken by the noise, and the nearest-neighbour sets are spread over many clusters (the hard case for
IVF, which a single-blob Gaussian would hide).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["clustered_vectors"]


def clustered_vectors(
    n: int,
    layout: Sequence[tuple[str, int]] = tuple((f"attr{i}", 64) for i in range(7)),
    *,
    values: int | Sequence[int] = 12,
    noise: float = 0.6,
    seed: int = 0,
    chunk: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` concatenated unit sub-embeddings and the attribute value each item drew.

    Args:
        n: rows.
        layout: ``[(attribute, d_t), ...]``; the default is seven 64-d attributes (448-d rows).
        values: prototypes per attribute (one number for all, or one per attribute).
        noise: norm of the noise relative to the unit prototype (larger: looser clusters).
        seed: the random seed; the same arguments give the same arrays.
        chunk: rows generated at once, bounding the temporary memory for large ``n``.

    Returns:
        ``(vectors (n, sum d_t) float32, codes (n, T) int64)``, each sub-embedding of unit norm.
    """
    rng = np.random.default_rng(seed)
    counts = [int(values)] * len(layout) if isinstance(values, int | np.integer) else [int(v) for v in values]
    if len(counts) != len(layout):
        raise ValueError(f"values: expected {len(layout)} counts (one per attribute), got {len(counts)}")
    protos = []
    for (_, d), v in zip(layout, counts, strict=True):
        p = rng.normal(size=(v, d)).astype(np.float32)
        protos.append(p / np.linalg.norm(p, axis=1, keepdims=True))  # (V_t, d_t)
    dim = sum(d for _, d in layout)
    out = np.empty((n, dim), dtype=np.float32)
    codes = np.empty((n, len(layout)), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        col = 0
        for t, ((_, d), p) in enumerate(zip(layout, protos, strict=True)):
            c = rng.integers(0, p.shape[0], size=stop - start)
            part = p[c] + rng.normal(scale=noise / np.sqrt(d), size=(stop - start, d)).astype(np.float32)
            out[start:stop, col : col + d] = part / np.linalg.norm(part, axis=1, keepdims=True)  # (B, d_t)
            codes[start:stop, t] = c
            col += d
    return out, codes
