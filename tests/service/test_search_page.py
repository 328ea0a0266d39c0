"""The substitutes panel in headless Chromium (Debian's package at /usr/bin/chromium), served by uvicorn on
loopback with a tiny catalog index: chips from the upload's predicted values, a select that changes one (set),
a lock (only), and a grid of thumbnails whose order and distances are :meth:`CatalogIndex.search`'s."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from tests.service.conftest import CHROMIUM, ColourPredictor, LoopbackServer
from tests.service.test_search_api import build_catalog

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)"
)
HITS = 12  # what the page asks for


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_catalog(tmp_path_factory.mktemp("search-page"))


@pytest.fixture(scope="module")
def served(built) -> Iterator[dict[str, Any]]:
    from vestis.inference.predictor import Predictor
    from vestis.retrieval.catalog_index import CatalogIndex
    from vestis.service import ServiceConfig, create_app

    predictor = Predictor.from_path(built["checkpoint"], device="cpu")
    index = CatalogIndex.open(built["index"])
    with index, LoopbackServer(create_app(predictor, ServiceConfig(max_wait_ms=1), index=index)) as server:
        yield {"url": server.url, "index": index, "predictor": predictor}


def _grid(page) -> list[tuple[str, float]]:
    return page.locator("#hits .hit").evaluate_all("es => es.map(e => [e.dataset.id, Number(e.dataset.distance)])")


def _wait_search(page, n: int) -> None:
    """Until the grid shows the answer of the page's ``n``-th search."""
    page.wait_for_function(
        "n => { const h = document.getElementById('hits'); return h.dataset.state === 'done' && "
        "Number(h.dataset.searches) >= n; }",
        arg=n,
    )


def _same(got: list[tuple[str, float]], hits) -> None:
    assert [g[0] for g in got] == [h.id for h in hits]
    assert [g[1] for g in got] == pytest.approx([h.distance for h in hits], abs=1e-6)


def test_chips_change_and_lock_rerun_the_search(served, browser, built):
    index, predictor = served["index"], served["predictor"]
    picture = built["images"]["item7"]
    query = Image.open(picture).convert("RGB")
    [predicted] = predictor.predict([query])

    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(served["url"] + "/")
    page.wait_for_selector("#substitutes:not([hidden])")
    assert page.locator("#index-info").inner_text() == "15 items · faiss flat"
    page.set_input_files("#file-input", str(picture))
    _wait_search(page, 1)

    # one chip per attribute that applies, showing the predicted value(s), in the index's order
    chips = page.locator("#chips .chip").evaluate_all("es => es.map(e => e.dataset.attribute)")
    assert chips == [a for a in ("category", "colour", "sleeve", "occasion") if a in predicted]
    for name in chips:
        shown = page.locator(f'.chip[data-attribute="{name}"] select option').first.inner_text()
        want = predicted[name].get("values", [predicted[name].get("value")])
        assert shown == (", ".join(want) if want else "none")

    # the grid is the index's answer for the uploaded image; every thumbnail loads from this server
    _same(_grid(page), index.search(query, k=HITS))
    page.wait_for_function(
        "() => [...document.querySelectorAll('#hits img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert page.locator("#hits img").count() == HITS

    # change the colour chip: the search replaces the query's colour by the prototype of the new value
    colour = predicted["colour"]["value"]
    target = next(v for v in ("black", "red", "blue") if v != colour)
    page.select_option('.chip[data-attribute="colour"] select', target)
    _wait_search(page, 2)
    assert "changed" in (page.locator('.chip[data-attribute="colour"]').get_attribute("class") or "")
    _same(_grid(page), index.search(query, set={"colour": target}, k=HITS))

    # lock the category: only the locked attribute and the changed one are compared
    page.click('.chip[data-attribute="category"] .lock')
    _wait_search(page, 3)
    _same(_grid(page), index.search(query, set={"colour": target}, only=["category", "colour"], k=HITS))
    first = page.locator("#hits .hit").first
    assert set(first.get_attribute("title").splitlines()[2].replace(" · ", " ").split()[::2]) == {"category", "colour"}

    # back to the predicted colour, still locked: the category alone
    page.select_option('.chip[data-attribute="colour"] select', "")
    _wait_search(page, 4)
    _same(_grid(page), index.search(query, only=["category"], k=HITS))

    assert all(u.startswith(served["url"]) or u.startswith(("blob:", "data:")) for u in requests), requests
    page.close()


def test_a_failed_search_is_shown(served, browser, built, monkeypatch):
    def broken(*args, **kwargs):
        from vestis.errors import VestisError

        raise VestisError("set: the index is being rebuilt")

    monkeypatch.setattr(served["index"], "search", broken)
    page = browser.new_page()
    page.goto(served["url"] + "/")
    page.wait_for_selector("#substitutes:not([hidden])")
    page.set_input_files("#file-input", str(built["images"]["item2"]))
    page.wait_for_selector("#search-status.error")
    assert page.locator("#search-status").inner_text() == "422 invalid search: set: the index is being rebuilt"
    assert page.locator("#hits .hit").count() == 0
    # the attribute cards are there all the same
    assert page.locator(".attribute").count() == 4
    page.close()


def test_without_an_index_there_is_no_panel(browser):
    from vestis.service import ServiceConfig, create_app

    png = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(png, format="PNG")
    with LoopbackServer(create_app(ColourPredictor(), ServiceConfig(max_wait_ms=1))) as server:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("#ready-dot.ok")
        page.evaluate(
            """bytes => {
                const dt = new DataTransfer();
                dt.items.add(new File([new Uint8Array(bytes)], "red.png", {type: "image/png"}));
                document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", {dataTransfer: dt}));
            }""",
            list(png.getvalue()),
        )
        page.wait_for_selector('.attribute[data-attribute="category"] .bar')
        assert page.locator("#substitutes").is_hidden() and page.locator("#chips .chip").count() == 0
        page.close()
