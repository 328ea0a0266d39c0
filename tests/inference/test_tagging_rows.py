"""The fast paths of catalog tagging give the rows the plain ones gave: rounding, decoding, encoding, stacking."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vestis.inference.items import ImageItem, decode_image, decoded_batches, decoded_stacks
from vestis.inference.journal import Journal, encode_row, read_journal, write_batches
from vestis.inference.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(ckpt):
    return Predictor.from_path(ckpt, device="cpu")


def _reference_decode(p: Predictor, probs: dict[str, np.ndarray], calibrated: bool = True) -> list[dict]:
    """The per-image loop decode() was, with the rows' rounding (round(x, 6)) applied after it."""
    tax = p.taxonomy
    cat = tax[tax.category_attribute]
    out = []
    for i in range(len(probs[cat.name])):
        category = cat.values[int(np.argmax(probs[cat.name][i]))]
        res: dict[str, Any] = {}
        for a in tax:
            if not a.applies(category):
                continue
            q = probs[a.name][i]
            scores = {v: round(float(s), 6) for v, s in zip(a.values, q, strict=True)}
            if a.kind == "single":
                j = int(np.argmax(q))
                res[a.name] = {"value": a.values[j], "score": round(float(q[j]), 6), "scores": scores}
            else:
                t = p.thresholds_for(a.name, calibrated)
                chosen = [a.values[j] for j in np.argsort(-q, kind="stable") if q[j] >= t[j]]
                used = {v: float(x) for v, x in zip(a.values, t, strict=True)}
                res[a.name] = {"values": chosen, "scores": scores, "thresholds": used}
        out.append(res)
    return out


def _probs(p: Predictor, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = {a.name: rng.random((n, a.num_values), dtype=np.float32) for a in p.taxonomy}
    # exact ties of the 6th decimal (k/128 is a float32 whose 7th decimal is 5) and a tie in the argmax
    probs["colour"][0] = [1 / 128, 3 / 128, 3 / 128]
    probs["occasion"][1] = [0.2, 0.6, 0.9]  # exactly at the calibrated thresholds
    return probs


@pytest.mark.parametrize("calibrated", [True, False])
def test_decode_rounds_as_round_does_and_decides_on_the_raw_scores(predictor, calibrated):
    probs = _probs(predictor, 64, seed=int(calibrated))
    got = predictor.decode(probs, calibrated, digits=6)
    assert got == _reference_decode(predictor, probs, calibrated)
    assert got[0]["colour"]["scores"] == {"red": 0.007812, "blue": 0.023438, "green": 0.023438}
    assert got[0]["colour"]["value"] == "blue"  # the first of two equal scores
    # without digits the scores are the float32 values themselves
    whole = predictor.decode(probs, calibrated)
    assert whole[5]["colour"]["scores"]["red"] == float(probs["colour"][5, 0])
    assert [set(r) for r in whole] == [set(r) for r in got]


def test_the_vectorised_rounding_matches_round_on_float32_bit_patterns():
    from vestis.inference.predictor import _shown_scores

    rng = np.random.default_rng(7)
    x = rng.integers(0, 0x3F800001, (200, 500), dtype=np.uint32).view(np.float32)  # every float32 in [0, 1] may come
    assert _shown_scores(x, 6) == [[round(float(v), 6) for v in row] for row in x]
    wide = x.astype(np.float64) + 1e-12  # float64 scores take round() itself
    assert _shown_scores(wide[:3], 6) == [[round(float(v), 6) for v in row] for row in wide[:3]]


@pytest.fixture(params=["orjson", "json"])
def encoder(request, monkeypatch) -> str:
    """Rows encoded by orjson (skipped where it is not installed: it is in the ``serve`` extra only) or by json."""
    import vestis.inference.journal as journal

    if request.param == "orjson":
        pytest.importorskip("orjson")
        assert journal.orjson is not None
    else:
        monkeypatch.setattr(journal, "orjson", None)
    return request.param


def test_the_encoder_gives_the_rows_json_gives(encoder):
    rows = [
        {"id": "é/ü.jpg", "image": "x", "model": None, "attributes": {"c": {"value": "a", "score": 5e-05}}},
        {"id": "n", "image": "null.jpg", "model": "sha256:1", "error": "unreadable image (OSError: x)"},
        {"id": "nan", "scores": [float("nan"), float("inf"), -float("inf")]},  # json's NaN, not orjson's null
        {"id": "keys", "by": {1: "int key"}},  # not plain JSON for orjson
    ]
    for r in rows[:2]:
        assert json.loads(encode_row(r)) == r
    head = '{"id":"é/ü.jpg"' if encoder == "orjson" else '{"id": "é/ü.jpg"'  # orjson is compact; both UTF-8
    assert encode_row(rows[0]).startswith(head.encode())
    back = json.loads(encode_row(rows[2]))
    assert math.isnan(back["scores"][0]) and back["scores"][1:] == [math.inf, -math.inf]
    assert json.loads(encode_row(rows[3])) == {"id": "keys", "by": {"1": "int key"}}


def test_stacked_batches_hold_the_decoded_pixels(image_dir, tmp_path):
    paths = sorted(p for p in image_dir.rglob("*") if p.is_file())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a JPEG")
    items = (
        [ImageItem(p.name, p) for p in paths[:2]]
        + [ImageItem("broken", broken)]
        + [ImageItem(p.name, p) for p in paths[2:]]
    )
    for workers in (0, 1):
        stacks = list(decoded_stacks(items, 32, 114, 10**7, 4, workers))
        assert [len(its) for its, *_ in stacks] == [4, 2] and [ok for _, _, ok, _ in stacks] == [[0, 1, 3], [0, 1]]
        pixels = np.concatenate([px for _, px, _, _ in stacks])
        expected = [decode_image(it.path, 32, 114, 10**7)[0] for it in items if it.id != "broken"]
        assert pixels.dtype == np.uint8 and np.array_equal(pixels, np.stack(expected))
        assert stacks[0][3][2] == decode_image(broken, 32, 114, 10**7)[1]
        arrays = [a for _, arrs, _ in decoded_batches(items, 32, 114, 10**7, 4, workers) for a in arrs]
        assert arrays[2] is None and np.array_equal(np.stack([a for a in arrays if a is not None]), pixels)


class _Bar:
    def __init__(self) -> None:
        self.n = 0

    def advance(self, n: int) -> None:
        self.n += n


def _batches(n: int, fail: BaseException | None = None):
    for b in range(n):
        yield [{"id": f"{b}-{i}", "image": "x", "model": None, "attributes": {}} for i in range(3)]
    if fail is not None:
        raise fail


def test_the_writer_finishes_what_it_was_given_when_the_model_fails(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    bar = _Bar()
    with pytest.raises(RuntimeError, match="model failed"):
        write_batches(journal, _batches(3, RuntimeError("model failed")), bar, None)
    journal.close()
    assert [r["id"] for r in read_journal(tmp_path / "j.jsonl")] == [f"{b}-{i}" for b in range(3) for i in range(3)]
    assert bar.n == 9


def test_a_failing_report_stops_the_writer_at_once(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    calls: list[int] = []

    def on_batch(n: int) -> None:
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_batches(journal, _batches(6), _Bar(), on_batch)
    journal.close()
    assert len(read_journal(tmp_path / "j.jsonl")) == 6 and calls == [3, 3]  # two batches, none after
    journal = Journal(tmp_path / "k.jsonl")
    assert write_batches(journal, _batches(4), _Bar(), calls.append) == (12, 0)
    journal.close()


@pytest.fixture
def odd_names(image_dir, tmp_path):
    """A folder with a file whose name is not UTF-8 (``b"\\xff.jpg"``; Python names it ``"\\udcff.jpg"``)."""
    import os
    import shutil

    folder = tmp_path / "odd"
    folder.mkdir()
    shutil.copy(image_dir / "a.jpg", folder / "a.jpg")
    try:
        shutil.copy(image_dir / "c.jpg", os.path.join(os.fsencode(folder), b"\xff.jpg"))
    except OSError:  # a file system that takes UTF-8 names only
        pytest.skip("this file system refuses a name that is not UTF-8")
    return folder


def test_a_row_of_a_name_that_is_not_utf8_is_written_and_read_back(encoder):
    row = {"id": "\udcff.jpg", "image": "/x/\udcff.jpg", "model": None, "attributes": {"c": {"value": "é"}}}
    data = encode_row(row)
    want = '{"id": "\\udcff.jpg", "image": "/x/\\udcff.jpg", "model": null, "attributes": {"c": {"value": "\\u00e9"}}}'
    assert data == want.encode("ascii")  # json with ensure_ascii: the surrogate and the é escaped
    assert json.loads(data.decode("utf-8")) == row  # the same surrogate-escaped string


def _table(out: Path) -> list[dict]:
    if out.suffix == ".csv":
        with out.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    import pyarrow.parquet as pq

    return pq.read_table(out).to_pylist()


def _stop(n: int) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_tagging_a_file_whose_name_is_not_utf8(predictor, odd_names, tmp_path, suffix):
    import os

    from vestis.inference.tagging import journal_path, tag_catalog

    odd = Path(os.fsdecode(os.path.join(os.fsencode(odd_names), b"\xff.jpg")))
    inputs = [odd, odd_names / "a.jpg"]  # image files: ids are the paths as given, in this order
    out = tmp_path / f"t{suffix}"
    with pytest.raises(KeyboardInterrupt):  # killed after its first batch, the odd name's
        tag_catalog(predictor, inputs, out, batch_size=1, workers=0, threads=1, on_batch=_stop)
    assert [r["id"] for r in read_journal(journal_path(out))] == [str(odd)]
    r = tag_catalog(predictor, inputs, out, batch_size=1, workers=0, threads=1)
    assert (r.done_before, r.predicted, r.errors) == (1, 1, 0)  # the rerun knew the odd name was done
    if suffix == ".jsonl":  # the exact ids, once each
        assert [r["id"] for r in read_journal(out)] == [str(odd), str(odd_names / "a.jpg")]
        again = tag_catalog(predictor, inputs, out, batch_size=1, workers=0, threads=1)
        assert (again.done_before, again.predicted) == (2, 0) and len(read_journal(out)) == 2
    else:  # UTF-8 text: the byte that is not UTF-8 as a \xNN escape
        rows = _table(out)
        escaped = str(odd_names / "\\xff.jpg")
        assert [r["id"] for r in rows] == [escaped, str(odd_names / "a.jpg")]
        assert rows[0]["image"] == escaped and rows[0]["category"] in predictor.taxonomy["category"].values
