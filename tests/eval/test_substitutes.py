"""The substitute-retrieval protocol on hand-built galleries whose answers are known."""

import numpy as np
import pytest

from vestis.eval.substitutes import retrieval_metrics

# two attributes, two values each; rows 0-1 and 4-5 are twins, rows 2 and 3 are alone
LABELS = np.array([[0, 0], [0, 0], [0, 1], [1, 0], [1, 1], [1, 1]])
CODES = {"colour": LABELS[:, 0], "type": LABELS[:, 1]}


def _perfect():
    """Each sub-embedding is the one-hot of its value: the embeddings are the labels."""
    eye = np.eye(2, dtype=np.float32)
    return {"colour": eye[LABELS[:, 0]], "type": eye[LABELS[:, 1]]}


def test_perfect_embeddings_score_one_everywhere():
    emb = _perfect()
    m = retrieval_metrics(emb, CODES, emb, CODES, ["colour", "type"], k=1)
    s = m["summary"]
    assert s["num_queries"] == 4  # the twins; rows 2 and 3 have no other row with their label vector
    assert s["query_top1"] == 1.0
    # the prototypes are the one-hot vectors: a manipulated query is exactly its target's embedding
    assert s["num_manipulation_queries"] == 6 and s["manipulation_top1"] == 1.0
    assert s["manipulation_ndcg1"] == 1.0
    assert s["triplet_accuracy"] == 1.0 and s["map"] == 1.0
    assert s["mean_recall@5"] == 1.0
    assert m["attributes"]["colour"]["recall@5"] == 1.0


def test_collapsed_embeddings_lose_every_tie():
    """One vector for every row: all distances tie, and ties count as failures."""
    same = {a: np.tile(np.array([[1.0, 0.0]], np.float32), (6, 1)) for a in CODES}
    m = retrieval_metrics(same, CODES, same, CODES, ["colour", "type"], k=1)
    s = m["summary"]
    assert s["query_top1"] == 0.0 and s["manipulation_top1"] == 0.0
    assert s["triplet_accuracy"] == 0.0


def test_colour_only_embeddings_fail_type_manipulations():
    """Type sub-embeddings that carry colour: changing the type cannot move the query to its target."""
    eye = np.eye(2, dtype=np.float32)
    emb = {"colour": eye[LABELS[:, 0]], "type": eye[LABELS[:, 0]]}
    m = retrieval_metrics(emb, CODES, emb, CODES, ["colour", "type"], k=1)
    # the type triplets (same type vs other type) are all ties or reversed
    assert m["attributes"]["type"]["triplet_accuracy"] < 0.5
    assert m["attributes"]["colour"]["triplet_accuracy"] == 1.0
    assert m["summary"]["manipulation_top1"] < 1.0
    with pytest.raises(KeyError):
        m["summary"]["query_top30"]
