"""A memory ceiling for the service: the issue's pixel flood against a server in its own process.

The request of the issue: sixteen 6000 x 6000 one-bit PNGs, about 100 kB on the wire, each under the 40 M
pixel cap, and 180 MB once decoded to RGB (one byte a pixel, then four). Two such requests at once used
to take the server from 0.4 GB to 4.9 GB. The server runs in a subprocess on 127.0.0.1 so that its peak
resident memory (``VmHWM``, reset before the load) measures it alone; each test takes well under 30 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import b64, image_bytes, one_bit_png

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from Linux's /proc"),
]
ROOT = Path(__file__).resolve().parents[2]
MB = 2**20
SERVER = """
import json, socket, sys
import uvicorn
from tests.service.conftest import ColourPredictor
from vestis.service import ServiceConfig, create_app

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
app = create_app(ColourPredictor(), ServiceConfig(**json.loads(sys.argv[1])))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
"""


def _status(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` memory line (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


class _Server:
    def __init__(self, **settings: object) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
        cmd = [sys.executable, "-c", SERVER, json.dumps(settings)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        assert ready, "the server did not start within 60 s"
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and self.proc.poll() is None, "the server did not become ready"
            time.sleep(0.05)
        one = httpx.post(f"{self.url}/v1/attributes", json={"images": [b64(image_bytes((1, 2, 3)))]}, timeout=10)
        assert one.status_code == 200  # every code path has run once before the baseline
        self.baseline = _status(self.proc.pid, "VmRSS")
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS from here on

    @property
    def peak_growth(self) -> int:
        return _status(self.proc.pid, "VmHWM") - self.baseline

    @property
    def growth(self) -> int:
        return _status(self.proc.pid, "VmRSS") - self.baseline

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def flood() -> list[tuple[str, tuple[str, bytes, str]]]:
    png = one_bit_png(6000)
    return [("file", (f"{i}.png", png, "image/png")) for i in range(16)]


def _serve(**settings: object) -> Iterator[_Server]:
    server = _Server(**settings)
    try:
        yield server
    finally:
        server.close()


def _two_at_once(url: str, files: list) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            return await asyncio.gather(*[c.post("/v1/attributes", files=files) for _ in range(2)])

    return asyncio.run(main())


def test_the_flood_is_refused_from_the_headers_with_the_default_limits(flood):
    for server in _serve():
        t0 = time.monotonic()
        responses = _two_at_once(server.url, flood)
        seconds = time.monotonic() - t0
        assert [r.status_code for r in responses] == [413, 413]
        assert all(r.json()["error"] == "too many pixels" for r in responses)
        assert server.peak_growth < 50 * MB, server.peak_growth / MB  # before: +4.5 GB
        assert seconds < 10


def test_decoding_the_flood_holds_one_image_at_a_time_under_a_small_budget(flood):
    # the request cap lifted so that half the flood is decoded (16 images in two requests, which keeps the
    # test short); the budget fits one decoded image (172 MiB)
    for server in _serve(max_request_pixels=300_000_000, decode_budget_mb=200):
        t0 = time.monotonic()
        responses = _two_at_once(server.url, flood[:8])
        seconds = time.monotonic() - t0
        assert [r.status_code for r in responses] == [200, 200], [r.text[:200] for r in responses]
        assert all(len(r.json()["results"]) == 8 for r in responses)
        peak = server.peak_growth
        assert peak < 200 * MB + 100 * MB, peak / MB  # the budget and some slack; before: +4.5 GB
        time.sleep(0.5)
        assert server.growth < 100 * MB, server.growth / MB  # given back, not kept for the next request
        assert seconds < 30
