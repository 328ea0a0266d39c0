"""The web page in headless Chromium (Debian's package at /usr/bin/chromium), served by uvicorn on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import CHROMIUM, CHROMIUM_ARGS, ColourPredictor, expected, image_bytes

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    import uvicorn

    from vestis.service import ServiceConfig, create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes the socket over
    port = sock.getsockname()[1]
    app = create_app(ColourPredictor(), ServiceConfig(max_wait_ms=1))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _bars(page, attribute: str) -> dict[str, tuple[float, str, str]]:
    """value -> (data-score, shown percentage, fill width) of the bars of one attribute card."""
    rows = page.locator(f'.attribute[data-attribute="{attribute}"] .bar')
    out = {}
    for i in range(rows.count()):
        row = rows.nth(i)
        fill = row.locator(".bar-fill").evaluate("e => e.style.width")
        out[row.get_attribute("data-value")] = (
            float(row.get_attribute("data-score")),
            row.locator(".bar-score").inner_text(),
            fill,
        )
    return out


def test_upload_bars_heatmap_and_download(server, browser, tmp_path):
    color = (210, 40, 30)
    picture = tmp_path / "red-shirt.png"
    picture.write_bytes(image_bytes(color, (64, 64)))
    want = expected(color)

    page = browser.new_page(accept_downloads=True)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server + "/")
    page.wait_for_selector("#ready-dot.ok")
    page.set_input_files("#file-input", str(picture))
    page.wait_for_selector('.attribute[data-attribute="category"] .bar')

    # every attribute has a card; the predicted value and its bars match the predictor's output
    assert page.locator(".attribute").evaluate_all("es => es.map(e => e.dataset.attribute)") == [
        "category",
        "sleeve",
        "tone",
    ]
    assert page.locator('.attribute[data-attribute="category"] .prediction').inner_text() == "red"
    for name in ("category", "sleeve", "tone"):
        bars = _bars(page, name)
        assert set(bars) == set(want[name]["scores"])
        for value, (score, shown, width) in bars.items():
            assert score == pytest.approx(want[name]["scores"][value], abs=1e-9)
            assert shown == f"{100 * want[name]['scores'][value]:.1f}%"
            assert float(width.rstrip("%")) == pytest.approx(100 * want[name]["scores"][value], abs=1e-3)
    chosen = page.locator('.attribute[data-attribute="tone"] .bar.chosen').evaluate_all(
        "es => es.map(e => e.dataset.value)"
    )
    assert chosen == want["tone"]["values"]

    # the heat-map overlay appears, laid exactly over the preview (same box, same object-fit)
    page.click("label.switch")
    page.wait_for_function(
        "() => { const h = document.getElementById('heatmap'); return !h.hidden && h.complete && h.naturalWidth > 0; }"
    )
    box = page.locator("#heatmap").bounding_box()
    preview = page.locator("#preview").bounding_box()
    assert box is not None and preview is not None and box["width"] > 0
    assert (box["x"], box["y"], box["width"], box["height"]) == pytest.approx(
        (preview["x"], preview["y"], preview["width"], preview["height"]), abs=1
    )
    page.click("label.switch")
    assert page.locator("#heatmap").is_hidden()

    # the JSON download is the API's answer
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == "red-shirt.attributes.json"
    body = json.loads(Path(download.path()).read_text())
    [result] = body["results"]
    assert result["filename"] == "red-shirt.png" and (result["width"], result["height"]) == (64, 64)
    assert result["attributes"]["category"]["value"] == "red"
    assert result["attributes"]["tone"]["values"] == want["tone"]["values"]

    # nothing was requested from anywhere but this server
    assert requests and all(u.startswith(server) or u.startswith(("blob:", "data:")) for u in requests), requests
    page.close()


def test_drop_an_image_and_see_attributes_that_do_not_apply(server, browser):
    page = browser.new_page()
    page.goto(server + "/")
    data = list(image_bytes((20, 30, 230), (32, 32)))
    page.evaluate(
        """bytes => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], "blue.png", {type: "image/png"}));
            const drop = new DragEvent("drop", {dataTransfer: dt, bubbles: true});
            document.getElementById("drop-zone").dispatchEvent(drop);
        }""",
        data,
    )
    page.wait_for_selector('.attribute[data-attribute="category"] .bar')
    assert page.locator('.attribute[data-attribute="category"] .prediction').inner_text() == "blue"
    sleeve = page.locator('.attribute[data-attribute="sleeve"]')
    assert "not-applicable" in (sleeve.get_attribute("class") or "")
    assert sleeve.locator(".prediction").inner_text() == "does not apply to blue"
    assert sleeve.locator(".bar").count() == 0
    page.close()


def test_errors_are_shown(server, browser, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    page = browser.new_page()
    page.goto(server + "/")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#status.error")
    assert page.locator("#status").inner_text().startswith("415 unsupported image: file[0]: not a JPEG")
    assert page.locator("#download").is_disabled()
    page.close()
