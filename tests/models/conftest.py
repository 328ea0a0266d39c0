from __future__ import annotations

import pytest

from vestis.data.taxonomy import Taxonomy


@pytest.fixture
def taxonomy() -> Taxonomy:
    """Single- and multi-label attributes, a one-value multi-label one and a name with a dot."""
    return Taxonomy.from_dict(
        {
            "attributes": [
                {"name": "category", "kind": "single", "values": ["t-shirt", "shirt", "trousers"]},
                {"name": "sleeve.length", "kind": "single", "values": ["short", "half", "3/4", "full"]},
                {"name": "occasion", "kind": "multi", "values": ["casual", "party", "wedding"]},
                {"name": "distressed", "kind": "multi", "values": ["yes"]},
            ]
        }
    )


@pytest.fixture
def expected_outputs() -> dict[str, int]:
    """Attribute -> number of logits for :func:`taxonomy`."""
    return {"category": 3, "sleeve.length": 4, "occasion": 3, "distressed": 1}
