"""``POST /v1/search``, ``GET /v1/items/{id}`` and its thumbnail, ``GET /v1/index``, in-process, on a tiny
catalog index built by ``build_index`` from the tiny checkpoint the service also serves.

The answers are checked against :meth:`CatalogIndex.search` called directly and, for a manipulation, against a
naive reference computed from ``vectors.npy`` and the prototypes; thumbnails against Pillow's own resize.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.conftest import REAL_TAXONOMY, b64, image_bytes, make_checkpoint, wait_ready
from vestis.errors import VestisError

NAMES = [a["name"] for a in REAL_TAXONOMY["attributes"]]
CATEGORIES = ["t-shirt", "trousers", "dress"]
COLOURS = ["red", "blue", "green", "black"]
BIG = "item5"  # its image is 600 x 300, for the thumbnail's size


def build_catalog(root: Path) -> dict[str, Any]:
    """A labelled catalog of 15 noisy images, the checkpoint, and the index built from both.

    Returns:
        ``{"root", "checkpoint", "index" (the directory), "images" ({id: file})}``.
    """
    from vestis.retrieval.index_build import build_index

    cat = root / "catalog"
    cat.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["id,image,category,colour,sleeve,occasion"]
    images = {}
    for i in range(15):
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
        if f"item{i}" == BIG:  # a smooth picture, so that the JPEG thumbnail can be compared pixel by pixel
            y, x = np.mgrid[0:300, 0:600]
            pixels = np.stack([x * 255 // 599, y * 255 // 299, (x + y) * 255 // 898], axis=-1).astype(np.uint8)
        path = cat / f"im{i}.png"
        Image.fromarray(pixels).save(path)
        category = CATEGORIES[i % 3]
        sleeve = "" if category == "trousers" else ["short", "long"][i % 2]
        lines.append(f"item{i},im{i}.png,{category},{COLOURS[i % 4]},{sleeve},{['casual', 'formal'][i % 2]}")
        images[f"item{i}"] = path
    (cat / "manifest.csv").write_text("\n".join(lines) + "\n")
    ckpt = make_checkpoint(root / "tiny.ckpt")
    build_index(ckpt, cat / "manifest.csv", root / "index", workers=0, batch_size=8)
    return {"root": cat, "checkpoint": ckpt, "index": root / "index", "images": images}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_catalog(tmp_path_factory.mktemp("search"))


@pytest.fixture(scope="module")
def index(built):
    from vestis.retrieval.catalog_index import CatalogIndex

    with CatalogIndex.open(built["index"]) as idx:
        yield idx


@pytest.fixture(scope="module")
def app(built, index):
    from vestis.inference.predictor import Predictor
    from vestis.service import ServiceConfig, create_app

    predictor = Predictor.from_path(built["checkpoint"], device="cpu")
    return create_app(predictor, ServiceConfig(max_wait_ms=1, max_pixels=250_000), index=index)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def built_checkpoint(index) -> str:
    return index.meta["model"]["path"]


def _hits(index, query, **options) -> list[tuple[str, float, dict[str, float]]]:
    return [(h.id, h.distance, h.per_attribute) for h in index.search(query, **options)]


def _got(body: dict) -> list[tuple[str, float, dict[str, float]]]:
    return [(h["id"], h["distance"], h["per_attribute"]) for h in body["hits"]]


def _same(got, want) -> None:
    assert [g[0] for g in got] == [w[0] for w in want]
    for (_, gd, gp), (_, wd, wp) in zip(got, want, strict=True):
        assert gd == pytest.approx(wd, abs=1e-6) and gp == pytest.approx(wp, abs=1e-6)


# --- search -------------------------------------------------------------------------------------------------------
def test_search_by_id_is_the_index_search(client, index):
    res = client.post("/v1/search", json={"id": "item3", "k": 5})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["query"] == {"id": "item3", "filename": None, "width": None, "height": None}
    assert body["k"] == 5 and body["only"] == NAMES and body["set"] == {} and body["where"] == {}
    import vestis

    assert body["model"] == vestis.load(built_checkpoint(index)).fingerprint  # the model that made the vectors
    _same(_got(body), _hits(index, "item3", k=5))
    assert len(body["hits"]) == 5 and "item3" not in [h["id"] for h in body["hits"]]  # the query is left out
    assert body["hits"][0]["thumbnail"] == f"/v1/items/{body['hits'][0]['id']}/thumbnail"
    # most similar first: the distances never decrease, and each is the sum of 2 - 2 s_t
    dists = [h["distance"] for h in body["hits"]]
    assert dists == sorted(dists)
    for h in body["hits"]:
        assert h["distance"] == pytest.approx(sum(2 - 2 * s for s in h["per_attribute"].values()), abs=1e-5)
        assert h["attributes"] == index.item(h["id"])["attributes"]


def test_search_by_uploaded_image_matches_the_index_on_the_decoded_image(client, index, built):
    data = built["images"]["item7"].read_bytes()
    want = _hits(index, Image.open(io.BytesIO(data)).convert("RGB"), k=4)
    res = client.post("/v1/search", files={"file": ("q.png", data, "image/png")}, data={"k": "4"})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["query"] == {"id": None, "filename": "q.png", "width": 40, "height": 40}
    _same(_got(body), want)
    # an image query is not left out: the catalog's own photo is its best match, at distance ~0
    assert body["hits"][0]["id"] == "item7" and body["hits"][0]["distance"] == pytest.approx(0, abs=1e-5)
    # the same image as base64 in JSON gives the same answer
    _same(_got(client.post("/v1/search", json={"image": b64(data), "k": 4}).json()), want)


def test_options_as_form_fields_and_as_json_agree_with_the_index(client, index, built):
    options = {"set": {"colour": "black"}, "only": ["colour", "sleeve"], "where": {"category": ["t-shirt", "dress"]}}
    want = _hits(index, "item4", k=6, **options)
    res = client.post("/v1/search", json={"id": "item4", "k": 6, **options})
    assert res.status_code == 200, res.text
    _same(_got(res.json()), want)
    multipart = [("id", (None, "item4")), ("k", (None, "6")), ("set", (None, "colour=black"))]
    multipart += [("only", (None, "colour")), ("only", (None, "sleeve"))]  # repeated, or comma-separated below
    multipart += [("where", (None, "category=t-shirt")), ("where", (None, "category=dress"))]
    res = client.post("/v1/search", files=multipart)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["only"] == ["colour", "sleeve"] and body["where"] == {"category": ["t-shirt", "dress"]}
    _same(_got(body), want)
    for h in body["hits"]:
        assert set(h["per_attribute"]) == {"colour", "sleeve"}
        assert h["attributes"]["category"] in ("t-shirt", "dress")
    multipart = [m for m in multipart if m[0] != "only"] + [("only", (None, "colour, sleeve"))]
    _same(_got(client.post("/v1/search", files=multipart).json()), want)


def test_a_manipulation_ranks_by_the_prototype_as_a_naive_reference_does(client, index):
    """only=[colour], set colour=black: s = <p(black), g_colour> for every item, the query itself left out."""
    res = client.post("/v1/search", json={"id": "item0", "set": {"colour": "black"}, "only": ["colour"], "k": 50})
    assert res.status_code == 200, res.text
    vectors = np.load(index.path / "vectors.npy")  # (N, D) in items order
    start = sum(d for a, d in index.layout[: NAMES.index("colour")])
    width = dict(index.layout)["colour"]
    codes = [int(c) for c in index.prototypes.values["colour"]]
    proto = index.prototypes.vectors["colour"][codes.index(COLOURS.index("black"))]  # (d,)
    ids = list(index.items.ids)
    sims = {i: float(vectors[r, start : start + width] @ proto) for r, i in enumerate(ids) if i != "item0"}
    want = sorted(sims, key=lambda i: (-sims[i], int(index.items.keys[ids.index(i)])))
    hits = res.json()["hits"]
    assert [h["id"] for h in hits] == want
    for h in hits:
        assert h["per_attribute"] == {"colour": pytest.approx(sims[h["id"]], abs=1e-5)}
        assert h["distance"] == pytest.approx(2 - 2 * sims[h["id"]], abs=1e-5)


def test_where_without_a_match_is_no_hit(client):
    # sleeve does not apply to trousers: no item is both, so the pre-filter leaves nothing to rank
    where = {"category": ["trousers"], "sleeve": ["short"]}
    body = client.post("/v1/search", json={"id": "item3", "where": where})
    assert body.status_code == 200 and body.json()["hits"] == [], body.text
    one = client.post("/v1/search", json={"id": "item3", "where": {"category": ["trousers"], "colour": ["red"]}})
    assert [h["id"] for h in one.json()["hits"]] == ["item4"]  # 4 % 3 == 1 trousers, 4 % 4 == 0 red


# --- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"id": "nope"}, 404, "'nope': not in the index"),
        (
            {"id": "item1", "set": {"fabric": "silk"}},
            422,
            "unknown attribute 'fabric'; expected one of category, colour",
        ),
        ({"id": "item1", "set": {"colour": "mauve"}}, 422, "expected one of red, blue, green, black"),
        ({"id": "item1", "only": ["collar"]}, 422, "only: unknown attribute 'collar'"),
        ({"id": "item1", "only": []}, 422, "expected at least one attribute"),
        ({"id": "item1", "where": {"colour": ["mauve"]}}, 422, "where: colour='mauve' is not a value of colour"),
        ({"id": "item1", "k": 0}, 422, "greater than or equal to 1"),
        ({"id": "item1", "k": 10_000}, 422, "less than or equal to 200"),
        ({"id": "item1", "image": b64(image_bytes((1, 2, 3)))}, 422, "exactly one query"),
        ({"k": 3}, 422, "exactly one query"),
        ({"id": "item1", "colour": "red"}, 422, "extra_forbidden"),
        ({"image": "https://example.com/x.jpg"}, 422, "not valid base64"),
        ({"image": b64(b"not an image")}, 415, "image: not a JPEG"),
        ({"image": b64(image_bytes((1, 2, 3), (600, 600)))}, 413, "over the cap of 250,000"),
    ],
)
def test_bad_json_searches_are_4xx_naming_the_problem(client, body, status, needle):
    res = client.post("/v1/search", json=body)
    assert res.status_code == status, res.text
    assert needle in json.dumps(res.json()["detail"]), res.text


def test_bad_requests_of_other_shapes(client):
    res = client.post("/v1/search", content=b"id=item1", headers={"content-type": "text/plain"})
    assert res.status_code == 415 and res.json()["error"] == "unsupported media type"
    deep = b'{"id": "item1", "where": ' + b"[" * 40 + b"]" * 40 + b"}"
    res = client.post("/v1/search", content=deep, headers={"content-type": "application/json"})
    assert res.status_code == 422 and "nested more than 32" in res.json()["detail"]
    res = client.post("/v1/search", content=b"{", headers={"content-type": "application/json"})
    assert res.status_code == 422 and res.json()["error"] == "invalid JSON"
    two = [("file", ("a.png", image_bytes((1, 2, 3)), "image/png"))] * 2
    assert client.post("/v1/search", files=two).status_code == 413
    res = client.post("/v1/search", files=[("id", (None, "item1")), ("set", (None, "colour"))])
    assert res.status_code == 422 and "set: expected attribute=value, got 'colour'" in res.text
    res = client.post("/v1/search", files=[("id", (None, "item1")), ("k", (None, "many"))])
    assert res.status_code == 422 and "int_parsing" in res.text
    res = client.post("/v1/search", files=[("id", (None, "item1")), ("colour", (None, "red"))])
    assert res.status_code == 422 and "unknown fields ['colour']" in res.text
    res = client.post("/v1/search", files=[("file", (None, "not a file"))])
    assert res.status_code == 422 and "expected a file upload" in res.text


def test_a_search_flood_is_shed_with_retry_after(client, app):
    from tests.service.conftest import metric_samples

    searcher = app.state.searcher
    before = metric_samples(client.get("/metrics").text).get(("vestis_shed_requests_total", (("reason", "search"),)), 0)
    searcher.pending = 10**6  # as if that many were waiting for the search thread
    try:
        res = client.post("/v1/search", json={"id": "item1"})
    finally:
        searcher.pending = 0
    assert res.status_code == 503 and res.headers["retry-after"] == "1", res.text
    after = metric_samples(client.get("/metrics").text)[("vestis_shed_requests_total", (("reason", "search"),))]
    assert after == before + 1
    assert client.post("/v1/search", json={"id": "item1"}).status_code == 200


def test_an_image_query_and_a_thumbnail_hold_their_decode_memory(client, app, index, built, monkeypatch):
    """The decoded query is held in the service's decode budget while it is searched, and freed after."""
    import vestis.service.search as search_module

    budget = app.state.service.budget
    held: list[int] = []
    real_search, real_thumbnail = index.search, search_module._thumbnail_jpeg
    monkeypatch.setattr(index, "search", lambda *a, **kw: held.append(budget.in_use) or real_search(*a, **kw))
    monkeypatch.setattr(
        search_module, "_thumbnail_jpeg", lambda *a, **kw: held.append(budget.in_use) or real_thumbnail(*a, **kw)
    )
    data = built["images"]["item3"].read_bytes()  # a 40 x 40 RGB PNG: 40 * 40 * 4 bytes decoded
    assert client.post("/v1/search", files={"file": ("q.png", data, "image/png")}).status_code == 200
    assert client.get(f"/v1/items/{BIG}/thumbnail").status_code == 200  # 600 x 300 RGB
    assert held == [40 * 40 * 4, 600 * 300 * 4] and budget.in_use == 0
    assert client.post("/v1/search", json={"id": "item3"}).status_code == 200  # an id query decodes nothing
    assert held == [40 * 40 * 4, 600 * 300 * 4, 0]


# --- items and thumbnails -----------------------------------------------------------------------------------------
def test_item_is_what_the_index_holds(client, index):
    res = client.get("/v1/items/item4")
    assert res.status_code == 200, res.text
    body = res.json()
    want = index.item("item4")
    assert body["image"] == "im4.png" and body["thumbnail"] == "/v1/items/item4/thumbnail"
    assert body["labels"] == want["labels"] == {"category": "trousers", "colour": "red", "sleeve": None,
                                                "occasion": "casual"}  # fmt: skip
    assert body["predictions"] == want["predictions"] and body["attributes"] == want["attributes"]
    assert body["scores"] == pytest.approx(want["scores"])
    assert client.get("/v1/items/nope").status_code == 404
    assert client.get("/v1/items/nope/thumbnail").json()["error"] == "unknown id"


def test_thumbnail_is_a_bounded_jpeg_of_the_catalog_image(client, built):
    res = client.get(f"/v1/items/{BIG}/thumbnail")
    assert res.status_code == 200, res.text
    assert res.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(res.content))
    assert thumb.format == "JPEG" and thumb.size == (256, 128)
    want = Image.open(built["images"][BIG]).convert("RGB").resize((256, 128), Image.Resampling.LANCZOS)
    err = np.abs(np.asarray(thumb, np.float64) - np.asarray(want, np.float64))
    assert err.mean() < 2 and err.max() < 24  # JPEG at quality 85 of the same resize
    small = Image.open(io.BytesIO(client.get("/v1/items/item2/thumbnail").content))
    assert small.size == (40, 40)  # never enlarged


def _with_image(index, item_id: str, stored: str):
    """Point one item at another stored image path for the length of a ``with`` block."""
    import contextlib

    @contextlib.contextmanager
    def swap():
        r = index.row(item_id)
        old = index.items.images[r]
        index.items.images[r] = stored
        try:
            yield
        finally:
            index.items.images[r] = old

    return swap()


def test_thumbnails_never_leave_the_catalog_root(client, index, built, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(image_bytes((9, 9, 9)))
    root = built["root"]
    (root / "link.png").symlink_to(secret)
    (root / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    try:
        cases = {
            "link.png": 403,  # a symlink inside the root to a file outside
            "linked-dir/secret.png": 403,  # a symlinked folder
            os.path.relpath(secret, root): 403,  # ../../.. out of the root
            str(secret): 403,  # an absolute path outside
            "missing.png": 404,
            "manifest.csv": 415,  # inside, but not an image
        }
        for stored, status in cases.items():
            with _with_image(index, "item1", stored):
                res = client.get("/v1/items/item1/thumbnail")
            assert res.status_code == status, (stored, res.text)
            assert res.content[:3] != b"\xff\xd8\xff", stored  # never the image bytes
        with _with_image(index, "item1", "link.png"):
            assert "resolves outside the catalog root" in client.get("/v1/items/item1/thumbnail").json()["detail"]
    finally:
        (root / "link.png").unlink()
        (root / "linked-dir").unlink()
    assert client.get("/v1/items/item1/thumbnail").status_code == 200


def test_index_info_lists_the_values_with_prototypes(client, index):
    body = client.get("/v1/index").json()
    assert body["count"] == 15 == len(index) and body["backend"] == "faiss" and body["kind"] == "flat"
    by_name = {a["name"]: a for a in body["attributes"]}
    assert list(by_name) == NAMES
    assert by_name["colour"]["prototypes"] == COLOURS and by_name["colour"]["values"] == COLOURS
    assert by_name["sleeve"]["prototypes"] == ["short", "long"]
    assert by_name["occasion"]["kind"] == "multi"


# --- start-up -----------------------------------------------------------------------------------------------------
def test_an_index_of_another_model_or_taxonomy_is_refused(built, index, tmp_path):
    from tests.service.conftest import ColourPredictor
    from vestis.service import create_app
    from vestis.service.search import check_index_model

    check_index_model(index, built["checkpoint"])  # the index's own model passes
    other = tmp_path / "other.ckpt"
    other.write_bytes(built["checkpoint"].read_bytes() + b"\0")
    with pytest.raises(VestisError, match=r"built with .*tiny\.ckpt .* not with .*other\.ckpt"):
        check_index_model(index, other)
    with pytest.raises(VestisError, match=r"its attributes \['category', 'colour', 'sleeve', 'occasion'\] are not"):
        create_app(ColourPredictor(), index=index)


def _another_checkpoint(path: Path) -> Path:
    """The tiny model of the conftest with other random weights: same taxonomy, another sha256."""
    import torch

    from tests.service.conftest import REAL_TAXONOMY as tax
    from vestis.config import load_config
    from vestis.data.taxonomy import Taxonomy
    from vestis.models import create_model
    from vestis.train.checkpoint import save_checkpoint

    cfg = load_config("tiny", ["data.image_size=48", "model.backbone=resnet18_tiny"])
    torch.manual_seed(4)
    return save_checkpoint(path, model=create_model(cfg.model, Taxonomy.from_dict(tax)), config=cfg,
                           taxonomy=Taxonomy.from_dict(tax))  # fmt: skip


def test_serve_with_an_index(built, tmp_path, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    import vestis.cli

    calls: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app))
    ok = CliRunner().invoke(vestis.cli.app, ["serve", str(built["checkpoint"]), "--index", str(built["index"])])
    assert ok.exit_code == 0, ok.output
    assert "searching 15 items" in ok.output
    paths = {r.path for r in calls["app"].routes}
    assert {"/v1/search", "/v1/items/{item_id}", "/v1/items/{item_id}/thumbnail", "/v1/index"} <= paths

    calls.clear()
    other = _another_checkpoint(tmp_path / "other.ckpt")
    bad = CliRunner().invoke(vestis.cli.app, ["serve", str(other), "--index", str(built["index"])])
    assert bad.exit_code == 1 and "app" not in calls
    [line] = [ln for ln in bad.output.splitlines() if ln.strip()]
    assert line.startswith("error:") and "not with" in line and "rebuild the index" in line
    missing = CliRunner().invoke(vestis.cli.app, ["serve", str(built["checkpoint"]), "--index", str(tmp_path)])
    assert missing.exit_code == 1 and "error:" in missing.output and "Traceback" not in missing.output


# --- the OpenAPI description, exercised -----------------------------------------------------------------------------
def test_openapi_documents_the_search_endpoints(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/search", "/v1/items/{item_id}", "/v1/items/{item_id}/thumbnail", "/v1/index"} <= set(spec["paths"])
    body = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert {"404", "413", "415", "422", "503"} <= set(spec["paths"]["/v1/search"]["post"]["responses"])


def test_no_search_input_is_a_server_error_and_answers_match_the_spec(built, index):
    """schemathesis on every search operation (driven by hand: its pytest fixture loader needs an older pytest)."""
    from hypothesis import given

    from vestis.inference.predictor import Predictor
    from vestis.service import ServiceConfig, create_app

    # no background warm-up: schemathesis restarts the lifespan per operation, and /readyz must be ready at once
    config = ServiceConfig(max_wait_ms=0, max_upload_mb=1, max_pixels=100_000, max_images=4, warmup=False)
    app = create_app(Predictor.from_path(built["checkpoint"], device="cpu"), config, index=index)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex="^/v1/(search|items|index)")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    ran = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def exercise(case) -> None:
            case.call_and_validate(checks=checks)

        exercise()
        ran.append(operation.label)
    assert sorted(ran) == [
        "GET /v1/index",
        "GET /v1/items/{item_id}",
        "GET /v1/items/{item_id}/thumbnail",
        "POST /v1/search",
    ]
