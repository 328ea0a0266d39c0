"""The web page of an outfit pipeline in headless Chromium: each garment's box drawn over the upload where the
answer puts it, and the garment list (object type, category, attributes, what the taxonomy suppressed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import CHROMIUM, LoopbackServer
from tests.service.outfit_fixtures import expected_garment, make_pipeline, png

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)"
)

# a hand-written answer for a 200 x 100 image: two garments, laid out by the page with object-fit: contain
KNOWN = {
    "image": "street.png",
    "width": 200,
    "height": 100,
    "model": "sha256:" + "cd" * 32,
    "garments": [
        {
            "box": [20.0, 10.0, 80.0, 90.0],
            "object_type": "upper-body",
            "object_score": 0.91,
            "category": "t-shirt",
            "category_score": 0.8,
            "category_top": [["t-shirt", 0.8], ["trousers", 0.15], ["sneakers", 0.05]],
            "attributes": {"sleeve": [["short", 0.7]], "colour": [["red", 0.9], ["white", 0.6]]},
            "suppressed": [],
        },
        {
            "box": [120.0, 50.0, 190.0, 100.0],
            "object_type": "footwear",
            "object_score": 0.55,
            "category": "sneakers",
            "category_score": 0.95,
            "category_top": [["sneakers", 0.95]],
            "attributes": {},
            "suppressed": ["sleeve=long"],
        },
    ],
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from vestis.inference.pipeline import OutfitPipeline
    from vestis.service import ServiceConfig, create_app

    folder = tmp_path_factory.mktemp("outfit-page")
    pipeline = OutfitPipeline.load(make_pipeline(folder), device="cpu")
    with LoopbackServer(create_app(pipeline, ServiceConfig(max_wait_ms=1))) as server:
        yield {"url": server.url, "pipeline": pipeline, "folder": folder}


def _open(browser, url: str, picture: Path, requests: list[str] | None = None):
    page = browser.new_page(accept_downloads=True, viewport={"width": 1200, "height": 900})
    if requests is not None:
        page.on("request", lambda r: requests.append(r.url))
    page.goto(url + "/")
    page.wait_for_selector("#ready-dot.ok")
    page.set_input_files("#file-input", str(picture))
    page.wait_for_selector("#boxes:not([hidden]) .box")
    return page


def _expected_rects(page, width: int, height: int, boxes: list[list[float]]) -> list[tuple[float, ...]]:
    """Where each box must be on screen: the preview's object-fit: contain area, computed here."""
    r = page.locator("#preview").evaluate(
        "e => { const b = e.getBoundingClientRect(); return [b.x + e.clientLeft, b.y + e.clientTop, "
        "e.clientWidth, e.clientHeight]; }"
    )
    x, y, w, h = r
    scale = min(w / width, h / height)
    ox, oy = x + (w - width * scale) / 2, y + (h - height * scale) / 2
    return [(ox + x0 * scale, oy + y0 * scale, (x1 - x0) * scale, (y1 - y0) * scale) for x0, y0, x1, y1 in boxes]


def _drawn(page) -> list[tuple[float, ...]]:
    out = []
    for i in range(page.locator("#boxes .box").count()):
        b = page.locator(f'#boxes .box[data-index="{i}"]').bounding_box()
        assert b is not None
        out.append((b["x"], b["y"], b["width"], b["height"]))
    return out


def _same_rects(got: list[tuple[float, ...]], want: list[tuple[float, ...]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1.0)


def test_the_pipelines_garment_is_boxed_and_listed(served, browser):
    side = 96
    picture = served["folder"] / "look.png"
    picture.write_bytes(png((200, 40, 40), (side, side)))
    want = expected_garment(side)
    requests: list[str] = []
    page = _open(browser, served["url"], picture, requests)

    assert page.locator("#model-name").inner_text() == (
        "outfit pipeline · 4 object types · 3 categories · 5 attribute values"
    )
    assert page.locator("#result-title").inner_text() == "Garments"
    assert page.locator("#controls").is_hidden()  # no heat map for a pipeline
    [drawn] = _drawn(page)
    [rect] = _expected_rects(page, side, side, [want["box"]])
    assert drawn == pytest.approx(rect, abs=1.0)
    assert page.locator(".box-label").inner_text() == "1 lower-body"

    [item] = page.locator("#garments .garment").all()
    assert item.locator(".garment-type").text_content() == f"1 · lower-body {100 * want['object_score']:.1f}%"
    assert item.locator(".garment-category").inner_text() == f"trousers {100 * want['category_score']:.1f}%"
    colour = want["colour"]
    assert item.locator('dd[data-attribute="colour"]').inner_text() == (
        f"red {100 * colour['red']:.1f}%, white {100 * colour['white']:.1f}%"
    )
    assert item.locator(".garment-suppressed").inner_text() == "does not apply to trousers: sleeve=short"

    with page.expect_download() as info:
        page.click("#download")
    assert info.value.suggested_filename == "look.outfit.json"
    body = json.loads(Path(info.value.path()).read_text())
    assert body["model"] == served["pipeline"].fingerprint and len(body["garments"]) == 1
    assert "/v1/outfit" in {u.removeprefix(served["url"]) for u in requests}
    assert all(u.startswith(served["url"]) or u.startswith(("blob:", "data:")) for u in requests), requests
    page.close()


def test_a_known_answer_is_drawn_where_it_says(served, browser):
    picture = served["folder"] / "street.png"
    picture.write_bytes(png((30, 30, 30), (KNOWN["width"], KNOWN["height"])))
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.route(
        "**/v1/outfit", lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(KNOWN))
    )
    page.goto(served["url"] + "/")
    page.wait_for_selector("#ready-dot.ok")
    page.set_input_files("#file-input", str(picture))
    page.wait_for_selector('#boxes .box[data-index="1"]')

    boxes = [g["box"] for g in KNOWN["garments"]]
    _same_rects(_drawn(page), _expected_rects(page, KNOWN["width"], KNOWN["height"], boxes))
    assert page.locator(".box-label").all_inner_texts() == ["1 upper-body", "2 footwear"]
    items = page.locator("#garments .garment")
    assert items.count() == 2
    first, second = items.nth(0), items.nth(1)
    assert first.locator(".garment-category").inner_text() == "t-shirt 80.0%"
    assert first.locator("dt").all_inner_texts() == ["sleeve", "colour"]
    assert first.locator("dd").all_inner_texts() == ["short 70.0%", "red 90.0%, white 60.0%"]
    assert first.locator(".garment-suppressed").count() == 0
    assert second.locator(".garment-type").text_content() == "2 · footwear 55.0%"
    assert second.locator(".muted").first.inner_text() == "no attribute above its threshold"
    assert second.locator(".garment-suppressed").inner_text() == "does not apply to sneakers: sleeve=long"

    # hovering a garment highlights its box; a narrower window redraws the boxes on the smaller image
    first.hover()
    assert page.locator('#boxes .box[data-index="0"]').get_attribute("class") == "box active"
    page.set_viewport_size({"width": 700, "height": 900})
    page.wait_for_timeout(100)
    _same_rects(_drawn(page), _expected_rects(page, KNOWN["width"], KNOWN["height"], boxes))

    # no garment: the boxes go, and the page says so
    empty = {**KNOWN, "garments": []}
    page.unroute("**/v1/outfit")
    page.route(
        "**/v1/outfit", lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(empty))
    )
    other = served["folder"] / "plain.png"
    other.write_bytes(png((250, 250, 250), (40, 40)))
    page.set_input_files("#file-input", str(other))
    page.wait_for_function("() => document.getElementById('status').textContent === 'No garment found.'")
    assert page.locator("#boxes").is_hidden() and page.locator("#garments .garment").count() == 0
    page.close()
