"""``--engine ray``: the same rows as the local engine, on a local one-CPU Ray instance; a clear error without Ray."""

from __future__ import annotations

import json
import sys

import pytest

from vestis.errors import VestisError
from vestis.inference.tagging import tag_catalog


def test_without_ray_the_engine_says_how_to_install_it(ckpt, image_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(VestisError, match=r"--engine ray needs Ray Data: pip install 'vestis\[ray\]'"):
        tag_catalog(ckpt, [image_dir], tmp_path / "tags.jsonl", engine="ray")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, about its configuration defaults
def test_ray_engine_matches_the_local_engine(ckpt, image_dir, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'vestis[ray]'")
    pytest.importorskip("ray.data", reason="Ray Data is an optional extra: pip install 'vestis[ray]'")
    (image_dir.parent / "broken").mkdir(exist_ok=True)
    broken = image_dir.parent / "broken" / "x.jpg"
    broken.write_bytes(b"not a JPEG")
    inputs = [image_dir, broken]
    local = tag_catalog(ckpt, inputs, tmp_path / "local.jsonl", batch_size=2, workers=0)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        # the first run stops half-way: the second continues from its journal, as after a kill
        out = tmp_path / "ray.jsonl"
        out.write_bytes(b"".join((tmp_path / "local.jsonl").read_bytes().splitlines(keepends=True)[:2]))
        result = tag_catalog(ckpt, inputs, out, batch_size=2, workers=1, engine="ray", device="cpu")
    finally:
        ray.shutdown()
    assert (local.predicted, local.errors) == (5, 1)
    assert (result.done_before, result.predicted, result.errors) == (2, 3, 1)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert [r["id"] for r in got] == [r["id"] for r in ref]  # input order, each image once
    assert got[-1]["error"] == "not a readable image in an allowed format (JPEG, PNG, WEBP, GIF, BMP, TIFF)"
    for g, r in zip(got, ref, strict=True):
        for name, attr in g.get("attributes", {}).items():
            assert attr.get("value") == r["attributes"][name].get("value")
            assert attr["scores"] == pytest.approx(r["attributes"][name]["scores"], abs=1e-5)
