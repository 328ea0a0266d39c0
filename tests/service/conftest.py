"""A predictor whose output is known exactly: a tiny torch model with hand-set weights on the mean colour.

For a solid square image of colour ``c = (r, g, b) / 255`` (letterboxing a square leaves it unchanged):

* ``category`` (single: red, green, blue) = softmax(10 c);
* ``sleeve`` (single: short, long; applies to red and green only) = softmax(4 c_r, 4 c_g);
* ``tone`` (multi: light, dark) = sigmoid(+-12 (mean(c) - 0.5)), threshold 0.5, calibrated 0.9.

The heat-map is the red channel over 255, so a test knows where "the model looked".
"""

from __future__ import annotations

import base64
import io
import math
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vestis.config import load_config
from vestis.data.taxonomy import Taxonomy
from vestis.data.transforms import letterbox_array

TAXONOMY = Taxonomy.from_dict(
    {
        "name": "colours",
        "category_attribute": "category",
        "attributes": [
            {"name": "category", "kind": "single", "values": ["red", "green", "blue"]},
            {"name": "sleeve", "kind": "single", "values": ["short", "long"], "applies_to": ["red", "green"]},
            {"name": "tone", "kind": "multi", "values": ["light", "dark"]},
        ],
    }
)
IMAGE_SIZE = 8
# the colour that makes the model raise, to test failures
POISON = (255, 0, 255)


class ColourNet(nn.Module):
    """``uint8`` ``(B, 3, S, S)`` -> logits per attribute, from the mean colour only (hand-set weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.category = nn.Linear(3, 3)
        self.sleeve = nn.Linear(3, 2)
        self.tone = nn.Linear(3, 2)
        with torch.no_grad():
            self.category.weight.copy_(10 * torch.eye(3))
            self.category.bias.zero_()
            self.sleeve.weight.copy_(torch.tensor([[4.0, 0, 0], [0, 4.0, 0]]))
            self.sleeve.bias.zero_()
            # +-12 (mean(c) - 0.5) = +-(4 c_r + 4 c_g + 4 c_b - 6)
            self.tone.weight.copy_(torch.tensor([[4.0, 4, 4], [-4.0, -4, -4]]))
            self.tone.bias.copy_(torch.tensor([-6.0, 6.0]))
        self.double()  # float64, so the tests can compare with the formulas to 1e-9

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        m = x.double().div(255.0).mean((2, 3))  # (B, 3)
        return {"category": self.category(m), "sleeve": self.sleeve(m), "tone": self.tone(m)}


class ColourPredictor:
    """Implements the service's ``AttributePredictor`` protocol around :class:`ColourNet`.

    Attributes:
        calls: the batch size of every ``predict_arrays`` call, in order.
        gate: when set to an unset :class:`threading.Event`, ``predict_arrays`` waits for it.
        delay: seconds every ``predict_arrays`` call takes at least (a slow model).
    """

    def __init__(self) -> None:
        self.taxonomy = TAXONOMY
        self.preprocessing: dict[str, Any] = {
            "image_size": IMAGE_SIZE,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "pad_value": 255,
            "resize": "letterbox",
        }
        self.thresholds = {"tone": [0.9, 0.9]}
        self.net = ColourNet().eval()
        self.calls: list[int] = []
        self.gate: threading.Event | None = None
        self.delay = 0.0
        self.heatmap_calls: list[tuple[int, int]] = []

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        s = IMAGE_SIZE
        out = np.empty((len(images), 3, s, s), dtype=np.uint8)
        for i, img in enumerate(images):
            out[i] = letterbox_array(img, s, 255)  # as the real predictor: no copy of an RGB image
        return out

    def predict_arrays(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        self.calls.append(len(batch))
        means = batch.reshape(len(batch), 3, -1).mean(-1)  # (B, 3)
        if any(tuple(np.round(m).astype(int)) == POISON for m in means):
            raise RuntimeError("poisoned colour")
        with torch.no_grad():
            logits = self.net(torch.from_numpy(batch))
        return {
            "category": logits["category"].softmax(-1).numpy(),
            "sleeve": logits["sleeve"].softmax(-1).numpy(),
            "tone": logits["tone"].sigmoid().numpy(),
        }

    def decode(self, probs: Mapping[str, np.ndarray], calibrated: bool = True) -> list[dict[str, dict[str, Any]]]:
        out = []
        for i in range(len(probs["category"])):
            category = TAXONOMY["category"].values[int(np.argmax(probs["category"][i]))]
            res: dict[str, dict[str, Any]] = {}
            for a in TAXONOMY:
                if not a.applies(category):
                    continue
                p = probs[a.name][i]
                scores = {v: float(s) for v, s in zip(a.values, p, strict=True)}
                if a.kind == "single":
                    j = int(np.argmax(p))
                    res[a.name] = {"value": a.values[j], "score": float(p[j]), "scores": scores}
                else:
                    cut = self.thresholds[a.name] if calibrated else [0.5] * a.num_values
                    order = np.argsort(-p, kind="stable")
                    res[a.name] = {"values": [a.values[j] for j in order if p[j] >= cut[j]], "scores": scores}
            out.append(res)
        return out

    def heatmap(self, image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
        self.heatmap_calls.append(image.size)
        if image.convert("RGB").getpixel((0, 0)) == POISON:
            raise RuntimeError("poisoned heat-map")
        red = image.convert("RGB").getchannel("R").resize(size or image.size, Image.Resampling.NEAREST)
        return np.asarray(red, dtype=np.float32) / 255.0


def softmax(xs: Sequence[float]) -> list[float]:
    e = [math.exp(x - max(xs)) for x in xs]
    return [v / sum(e) for v in e]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def expected(color: tuple[int, int, int], calibrated: bool = True) -> dict[str, dict[str, Any]]:
    """The result for a solid square image of ``color``, computed from the formulas in the module docstring."""
    c = [v / 255 for v in color]
    cat = softmax([10 * v for v in c])
    j = max(range(3), key=lambda k: cat[k])
    out: dict[str, dict[str, Any]] = {
        "category": {
            "value": ["red", "green", "blue"][j],
            "score": cat[j],
            "scores": dict(zip(["red", "green", "blue"], cat, strict=True)),
        }
    }
    if j != 2:
        sl = softmax([4 * c[0], 4 * c[1]])
        k = 0 if sl[0] >= sl[1] else 1
        out["sleeve"] = {"value": ["short", "long"][k], "score": sl[k], "scores": {"short": sl[0], "long": sl[1]}}
    z = 12 * (sum(c) / 3 - 0.5)
    tone = {"light": sigmoid(z), "dark": sigmoid(-z)}
    cut = 0.9 if calibrated else 0.5
    out["tone"] = {"values": sorted((v for v in tone if tone[v] >= cut), key=lambda v: -tone[v]), "scores": tone}
    return out


def assert_result(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) == set(want)
    for name, w in want.items():
        g = got[name]
        assert g.get("value") == w.get("value") and g.get("values") == w.get("values"), name
        assert g["scores"] == pytest.approx(w["scores"], abs=1e-9), name
        if "score" in w:
            assert g["score"] == pytest.approx(w["score"], abs=1e-9)


def image_bytes(color: tuple[int, int, int], size: tuple[int, int] = (16, 16), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def wait_ready(client: Any, timeout: float = 10.0) -> None:
    """Poll ``/readyz`` until it answers 200 (the warm-up runs in the background)."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise AssertionError("the service did not become ready")
        time.sleep(0.01)


@pytest.fixture
def predictor() -> ColourPredictor:
    return ColourPredictor()


class LoopbackServer:
    """uvicorn serving ``app`` in a thread on a free 127.0.0.1 port; stops itself on exit (bounded waits).

    uvicorn is told not to configure logging, so its records (an "Exception in ASGI application" among
    them) reach pytest's ``caplog``.
    """

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> ``{(name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def one_bit_png(side: int) -> bytes:
    """A white ``side`` x ``side`` one-bit PNG: a few kilobytes that decode to ``5 side^2`` bytes."""
    buf = io.BytesIO()
    Image.new("1", (side, side), 1).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# --- a real checkpoint ----------------------------------------------------------------------------------------
REAL_TAXONOMY = {
    "name": "tiny",
    "category_attribute": "category",
    "attributes": [
        {"name": "category", "kind": "single", "values": ["t-shirt", "trousers", "dress"]},
        {"name": "colour", "kind": "single", "values": ["red", "blue", "green", "black"]},
        {"name": "sleeve", "kind": "single", "values": ["short", "long"], "applies_to": ["t-shirt", "dress"]},
        {"name": "occasion", "kind": "multi", "values": ["casual", "formal", "sport"]},
    ],
}


def make_checkpoint(path: Path) -> Path:
    """A random-init ``resnet18_tiny`` a3 model at 48 px on :data:`REAL_TAXONOMY`, with calibrated thresholds."""
    from vestis.models import create_model
    from vestis.train.checkpoint import save_checkpoint

    cfg = load_config("tiny", ["data.image_size=48", "model.backbone=resnet18_tiny"])
    taxonomy = Taxonomy.from_dict(REAL_TAXONOMY)
    torch.manual_seed(3)
    model = create_model(cfg.model, taxonomy)
    return save_checkpoint(path, model=model, config=cfg, taxonomy=taxonomy, thresholds={"occasion": [0.45, 0.5, 0.55]})


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for the page tests, skipped with a reason where it is missing or cannot start."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        except Error as e:
            pytest.skip(f"Chromium cannot start here: {e}")
        yield b
        b.close()
