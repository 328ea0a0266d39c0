"""An embedding model served with its catalog index: search, items, ``/v1/attributes`` from what the model has
(a CSN's recognition columns, else the index's nearest prototypes), no ``/v1/heatmap``, the CLI refusal without
``--index``, and the page in headless Chromium.

Two random-init CSNs on :data:`REAL_TAXONOMY` index the catalog of :func:`build_catalog`: one with recognition
columns, one without (``model.columns=none``). Answers are checked against the index's own predictions for its
items, the model's logits computed directly, similarities computed by hand from ``vectors.npy`` and the
prototypes, and :meth:`CatalogIndex.search`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import vestis.cli
from tests.service.conftest import REAL_TAXONOMY, LoopbackServer, wait_ready
from tests.service.test_search_api import build_catalog
from vestis.config import load_config
from vestis.data.taxonomy import Taxonomy

NAMES = [a["name"] for a in REAL_TAXONOMY["attributes"]]
QUERIES = ["item1", "item4", "item8"]


def make_csn(path: Path, columns: str) -> Path:
    """A random-init CSN (``resnet18_tiny``, 48 px, 12-d) on :data:`REAL_TAXONOMY`."""
    from vestis.models import create_model
    from vestis.train.checkpoint import save_checkpoint

    overrides = ["data.image_size=48", "model.name=csn", "model.backbone=resnet18_tiny", "model.embedding_dim=12"]
    cfg = load_config("tiny", [*overrides, "model.embedding_hidden=16", f"model.columns={columns}"])
    taxonomy = Taxonomy.from_dict(REAL_TAXONOMY)
    torch.manual_seed(5)
    return save_checkpoint(path, model=create_model(cfg.model, taxonomy, image_size=48), config=cfg, taxonomy=taxonomy)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from vestis.retrieval.index_build import build_index

    root = tmp_path_factory.mktemp("serve-embedding")
    out = build_catalog(root)
    manifest = out["root"] / "manifest.csv"
    for columns in ("multi", "none"):
        ckpt = make_csn(root / f"csn-{columns}.ckpt", columns)
        build_index(ckpt, manifest, root / f"index-{columns}", workers=0, batch_size=8)
        out[columns] = {"checkpoint": ckpt, "index": root / f"index-{columns}"}
    return out


def _open(built: dict[str, Any], columns: str):
    from vestis.retrieval.catalog_index import CatalogIndex
    from vestis.service import ServiceConfig, create_app
    from vestis.service.embedding import EmbeddingAttributes

    index = CatalogIndex.open(built[columns]["index"])
    app = create_app(EmbeddingAttributes.from_index(index, "cpu"), ServiceConfig(max_wait_ms=1), index=index)
    return index, app


def _serve(built: dict[str, Any], columns: str) -> Iterator[dict[str, Any]]:
    index, app = _open(built, columns)
    with index, TestClient(app) as client:
        wait_ready(client)
        yield {"columns": columns, "index": index, "client": client}


@pytest.fixture(scope="module")
def with_columns(built) -> Iterator[dict[str, Any]]:
    yield from _serve(built, "multi")


@pytest.fixture(scope="module")
def without_columns(built) -> Iterator[dict[str, Any]]:
    yield from _serve(built, "none")


@pytest.fixture(params=["with_columns", "without_columns"])
def served(request) -> dict[str, Any]:
    return request.getfixturevalue(request.param)


def _upload(client: TestClient, path: Path) -> dict[str, Any]:
    res = client.post("/v1/attributes", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert res.status_code == 200, res.text
    return res.json()["results"][0]["attributes"]


# --- attributes from what the model has ---------------------------------------------------------------------------
def test_attributes_are_the_index_predictions_for_its_own_images(served, built):
    """An uploaded catalog photo gets the value (and score) the index stored for that item; the attributes that
    do not apply to the predicted category are left out (the index goes by the item's label where it has one)."""
    index = served["index"]
    for item_id in QUERIES:
        got = _upload(served["client"], built["images"][item_id])
        stored = index.item(item_id)
        category = got["category"]["value"]
        assert category == stored["predictions"]["category"]
        assert set(got) == {a for a in NAMES if index.taxonomy[a].applies(category)}
        for attr, res in got.items():
            if stored["predictions"][attr] is None:  # left out by the item's labelled category
                assert not index.taxonomy[attr].applies(stored["labels"]["category"])
                continue
            value = res["value"] if "value" in res else "|".join(res["values"]) or None
            assert value == stored["predictions"][attr], (item_id, attr)
            if "score" in res and stored["scores"][attr] is not None and index.taxonomy[attr].kind == "single":
                assert res["score"] == pytest.approx(stored["scores"][attr], abs=1e-5)
    # the answers name the embedding model (its fingerprint), as a classifier's do
    path = built["images"][QUERIES[0]]
    res = served["client"].post("/v1/attributes", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert res.json()["model"] == index.meta["model"]["fingerprint"] and res.json()["model"].startswith("sha256:")


def test_recognition_columns_give_the_models_probabilities(with_columns, built):
    served = with_columns
    from vestis.train.checkpoint import load_checkpoint, rebuild_model

    ckpt = built["multi"]["checkpoint"]
    model = rebuild_model(load_checkpoint(ckpt), source=str(ckpt), map_location="cpu").eval()
    emb = served["index"].embedder()
    picture = Image.open(built["images"]["item4"]).convert("RGB")
    batch = torch.from_numpy(emb.preprocess([picture])).float() / 255
    with torch.no_grad():
        logits = model((batch - emb.module.mean) / emb.module.std)["logits"]
    got = _upload(served["client"], built["images"]["item4"])
    tax = served["index"].taxonomy
    for attr, res in got.items():
        assert "source" not in res  # real probabilities
        p = logits[attr][0].softmax(0) if tax[attr].kind == "single" else logits[attr][0].sigmoid()
        assert list(res["scores"]) == list(tax[attr].values)
        assert list(res["scores"].values()) == pytest.approx(p.tolist(), abs=1e-5)
    p = logits["category"][0].softmax(0)
    assert got["category"]["value"] == tax["category"].values[int(p.argmax())]
    assert got["category"]["score"] == pytest.approx(float(p.max()), abs=1e-5)
    # multi-label: every value at or above 0.5, highest first (the index's rule)
    q = logits["occasion"][0].sigmoid()
    if "occasion" in got:
        want = [tax["occasion"].values[j] for j in torch.argsort(-q).tolist() if q[j] >= 0.5]
        assert got["occasion"]["values"] == want


def test_without_columns_the_scores_are_similarities_to_the_prototypes(without_columns, built):
    served = without_columns
    index = served["index"]
    row = index.row("item8")
    vector = np.asarray(index.vectors[row], np.float64)
    start, want = 0, {}
    for attr, d in index.layout:
        part = vector[start : start + d]  # the stored sub-embedding (d,)
        start += d
        values = index.taxonomy[attr].values
        protos = zip(index.prototypes.values[attr], index.prototypes.vectors[attr], strict=True)
        want[attr] = {values[int(c)]: float(part @ p) for c, p in protos}
    got = _upload(served["client"], built["images"]["item8"])
    assert got
    for attr, res in got.items():
        assert res["source"] == "prototype"
        assert res["scores"] == pytest.approx(want[attr], abs=1e-5)
        best = max(want[attr], key=want[attr].get)
        assert res.get("value", (res.get("values") or [None])[0]) == best
        assert res["score"] == pytest.approx(want[attr][best], abs=1e-5)


def test_no_heatmap_for_an_embedding_model(served):
    client = served["client"]
    spec = client.get("/openapi.json").json()
    assert "/v1/heatmap" not in spec["paths"]
    assert {"/v1/attributes", "/v1/search", "/v1/items/{item_id}", "/v1/taxonomy"} <= set(spec["paths"])
    res = client.post("/v1/heatmap", files={"file": ("a.png", b"x", "image/png")})
    assert res.status_code == 404 and res.json()["error"] == "not found"
    tax = client.get("/v1/taxonomy").json()
    assert tax["heatmap"] is False and tax["embedding"] == "csn" and tax["thresholds"] == {}
    assert [a["name"] for a in tax["attributes"]] == NAMES and tax["preprocessing"]["image_size"] == 48
    source = spec["components"]["schemas"]["AttributeResult"]["properties"]["source"]
    assert "not probabilities" in source["description"]


# --- search and items ---------------------------------------------------------------------------------------------
def test_search_and_items_run_on_the_embedding_model(served, built):
    client, index = served["client"], served["index"]
    res = client.post("/v1/search", json={"id": "item4", "k": 5, "set": {"colour": "black"}, "only": ["colour"]})
    assert res.status_code == 200, res.text
    want = index.search("item4", k=5, set={"colour": "black"}, only=["colour"])
    assert [h["id"] for h in res.json()["hits"]] == [h.id for h in want]
    assert [h["distance"] for h in res.json()["hits"]] == pytest.approx([h.distance for h in want], abs=1e-6)

    data = built["images"]["item7"].read_bytes()
    res = client.post("/v1/search", files={"file": ("q.png", data, "image/png")}, data={"k": "4"})
    assert res.status_code == 200, res.text
    want = index.search(Image.open(io.BytesIO(data)).convert("RGB"), k=4)
    assert [h["id"] for h in res.json()["hits"]] == [h.id for h in want]
    assert res.json()["hits"][0]["id"] == "item7"  # the catalog's own photo, at distance ~0

    item = client.get("/v1/items/item3").json()
    assert item["predictions"] == index.item("item3")["predictions"] and item["image"] == "im3.png"
    thumb = client.get(item["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (40, 40)


def test_a_classifier_still_has_its_heatmap(built):
    from vestis.inference.predictor import Predictor
    from vestis.service import ServiceConfig, create_app

    app = create_app(Predictor.from_path(built["checkpoint"], device="cpu"), ServiceConfig(max_wait_ms=1))
    with TestClient(app) as client:
        wait_ready(client)
        tax = client.get("/v1/taxonomy").json()
        assert tax["heatmap"] is True and tax["embedding"] is None
        assert "/v1/heatmap" in client.get("/openapi.json").json()["paths"]


# --- the command line ---------------------------------------------------------------------------------------------
def _onnx_with_metadata(path: Path, meta: dict[str, str]) -> Path:
    """A one-node ONNX graph (Identity) carrying ``meta`` as its metadata, as ``vestis export`` writes it."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


def test_serve_needs_an_index_for_an_embedding_model(built, monkeypatch):
    import uvicorn

    calls: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app))
    ckpt = built["none"]["checkpoint"]
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(ckpt)])
    assert res.exit_code == 1 and "app" not in calls
    [line] = [ln for ln in res.output.splitlines() if ln.strip()]
    assert line.startswith("error:") and "embedding model (csn) needs --index" in line and "Traceback" not in line

    ok = CliRunner().invoke(vestis.cli.app, ["serve", str(ckpt), "--index", str(built["none"]["index"])])
    assert ok.exit_code == 0, ok.output
    assert "searching 15 items" in ok.output and "4 attributes" in ok.output
    paths = {r.path for r in calls["app"].routes}
    assert {"/v1/attributes", "/v1/search", "/v1/items/{item_id}", "/v1/items/{item_id}/thumbnail"} <= paths
    assert "/v1/heatmap" not in paths

    # an ONNX file is recognised by the task in its vestis metadata; a classifier checkpoint is not taken for one
    from vestis.service.embedding import embedding_model_name

    calls.clear()
    onnx_file = _onnx_with_metadata(built["root"].parent / "csn.onnx", {"vestis.task": "embedding",
                                    "vestis.embedding": '{"model": "datrnet"}'})  # fmt: skip
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(onnx_file)])
    assert res.exit_code == 1 and "app" not in calls and "embedding model (datrnet) needs --index" in res.output
    assert embedding_model_name(_onnx_with_metadata(onnx_file.with_name("c.onnx"), {"vestis.task": "classify"})) is None
    assert embedding_model_name(built["checkpoint"]) is None and embedding_model_name(ckpt) == "csn"

    # the index of another model is refused as for a classifier
    calls.clear()
    bad = CliRunner().invoke(vestis.cli.app, ["serve", str(ckpt), "--index", str(built["multi"]["index"])])
    assert bad.exit_code == 1 and "app" not in calls and "rebuild the index" in bad.output


# --- the page -------------------------------------------------------------------------------------------------------
def test_page_with_an_embedding_model(built, browser):
    """No heat map (switch off, a note says why), similarity bars for prototype attributes, and the substitutes
    panel: chips from the predictions, a changed chip reruns the search, the grid is the index's answer."""
    index, app = _open(built, "none")
    picture = built["images"]["item7"]
    query = Image.open(picture).convert("RGB")
    with index, LoopbackServer(app) as server:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("#substitutes:not([hidden])")
        page.wait_for_selector("#model-note:not([hidden])")
        assert "csn is an embedding model: it has no heat map" in page.locator("#model-note").inner_text()
        page.set_input_files("#file-input", str(picture))
        page.wait_for_function(
            "() => { const h = document.getElementById('hits'); return h.dataset.state === 'done' && "
            "Number(h.dataset.searches) >= 1; }"
        )
        assert page.locator("#heatmap-toggle").is_disabled()
        predictor = app.state.service.predictor  # the served model, without a second app lifespan
        [got] = predictor.decode(predictor.predict_arrays(predictor.preprocess([query])))
        for attr, res in got.items():
            card = page.locator(f'.attribute[data-attribute="{attr}"]')
            assert card.locator(".source").inner_text() == "nearest prototype"
            shown = card.locator(".bar-score").all_inner_texts()
            top = sorted(res["scores"].values(), reverse=True)[: len(shown)]
            assert shown == [f"{s:.3f}" for s in top]
        chips = page.locator("#chips .chip").evaluate_all("es => es.map(e => e.dataset.attribute)")
        assert chips == [a for a in NAMES if a in got]

        def grid() -> list[str]:
            return page.locator("#hits .hit").evaluate_all("es => es.map(e => e.dataset.id)")

        assert grid() == [h.id for h in index.search(query, k=12)]
        target = next(v for v in ("black", "red", "blue") if v != got["colour"]["value"])
        page.select_option('.chip[data-attribute="colour"] select', target)
        page.wait_for_function("() => Number(document.getElementById('hits').dataset.searches) >= 2")
        page.wait_for_function("() => document.getElementById('hits').dataset.state === 'done'")
        assert grid() == [h.id for h in index.search(query, set={"colour": target}, k=12)]
        page.close()


def test_no_input_is_a_server_error_on_an_embedding_model(built):
    """schemathesis on /v1/attributes and the search operations of an embedding model's app (driven by hand)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    from vestis.retrieval.catalog_index import CatalogIndex
    from vestis.service import ServiceConfig, create_app
    from vestis.service.embedding import EmbeddingAttributes

    config = ServiceConfig(max_wait_ms=0, max_upload_mb=1, max_pixels=100_000, max_images=4, warmup=False)
    with CatalogIndex.open(built["none"]["index"]) as index:
        app = create_app(EmbeddingAttributes.from_index(index, "cpu"), config, index=index)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex="^/v1/(attributes|search)")
        ran = []
        for result in schema.get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def exercise(case) -> None:
                checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
                case.call_and_validate(checks=checks)

            exercise()
            ran.append(operation.label)
    assert sorted(ran) == ["POST /v1/attributes", "POST /v1/search"]


@pytest.mark.slow
def test_an_onnx_embedding_model_answers_from_the_prototypes(built, tmp_path):
    """ONNX Runtime gives embeddings only: every attribute is the nearest prototype's, as the index stored it."""
    from vestis.inference.export_embedding import export_embedding_onnx
    from vestis.retrieval.catalog_index import CatalogIndex
    from vestis.retrieval.index_build import build_index
    from vestis.service import ServiceConfig, create_app
    from vestis.service.embedding import EmbeddingAttributes

    onnx_file = export_embedding_onnx(built["multi"]["checkpoint"], tmp_path / "csn.onnx", check_images=2).path
    build_index(onnx_file, built["root"] / "manifest.csv", tmp_path / "index", workers=0, batch_size=8)
    with CatalogIndex.open(tmp_path / "index") as index:
        predictor = EmbeddingAttributes.from_index(index, "cpu")
        assert predictor.backend == "onnx" and set(predictor.sources.values()) == {"prototype"}
        with TestClient(create_app(predictor, ServiceConfig(max_wait_ms=1), index=index)) as client:
            wait_ready(client)
            got = _upload(client, built["images"]["item4"])
            stored = index.item("item4")
            for attr, res in got.items():
                assert res["source"] == "prototype"
                if stored["predictions"][attr] is not None:
                    assert res.get("value", (res.get("values") or [None])[0]) == stored["predictions"][attr]
            assert "/v1/heatmap" not in client.get("/openapi.json").json()["paths"]
