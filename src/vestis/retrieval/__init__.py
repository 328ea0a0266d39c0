"""Attribute-aware retrieval: prototypes, attribute manipulation and brute-force ranking (NumPy).

``vestis.retrieval.prototypes.prototypes`` builds the per-value prototypes; it is not re-exported here so that
the name keeps meaning the module::

    from vestis.retrieval import Prototypes, manipulate, rank
    from vestis.retrieval.prototypes import prototypes
"""

from __future__ import annotations

from vestis.retrieval.prototypes import GLOBAL, Prototypes, manipulate
from vestis.retrieval.search import rank

__all__ = ["GLOBAL", "Prototypes", "manipulate", "rank"]
