"""Load test of ``vestis serve`` on loopback: throughput and latency with and without micro-batching.

uvicorn runs in-process on 127.0.0.1 (a free port) with the ``default`` preset's model at random init on the
synthetic taxonomy; ``--concurrency`` clients (one ``httpx.AsyncClient``) each post one catalog JPEG per
request (multipart), back to back, until ``--requests`` requests are done or ``--duration`` seconds have
passed. Each batching setting gets the same warm-up and the same bound::

    python bench/serve.py --requests 400 --duration 60 --rounds 4 --concurrency 16 --batch-sizes 1 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import numpy as np
import torch
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from _common import write_section
from vestis.config import load_config
from vestis.data.synthetic import generate_catalog, synthetic_taxonomy
from vestis.inference.predictor import Predictor
from vestis.models import create_model
from vestis.service import ServiceConfig, create_app


@dataclass
class Result:
    max_batch_size: int
    max_wait_ms: float
    done: int
    errors: int
    seconds: float
    latencies: list[float]
    batch_images: float = 0.0  # images and model calls during the measured requests, from /metrics
    batch_calls: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.batch_images / self.batch_calls if self.batch_calls else float("nan")

    @property
    def throughput(self) -> float:
        return self.done / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


class _Server:
    """uvicorn in a thread on a socket bound to a free loopback port."""

    def __init__(self, app: object) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


async def _load(url: str, images: list[bytes], requests: int, duration: float, concurrency: int) -> Result:
    latencies: list[float] = []
    errors = 0
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        while (await client.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.05)
        for i in range(2 * concurrency):  # warm-up: connections, the first batches
            await client.post("/v1/attributes", files={"file": ("w.jpg", images[i % len(images)], "image/jpeg")})
        before = await client.get("/metrics")
        t0 = time.perf_counter()
        stop_at = t0 + duration

        async def worker() -> None:
            nonlocal errors, issued
            while issued < requests and time.perf_counter() < stop_at:
                k = issued
                issued += 1
                start = time.perf_counter()
                res = await client.post(
                    "/v1/attributes", files={"file": (f"{k}.jpg", images[k % len(images)], "image/jpeg")}
                )
                if res.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        seconds = time.perf_counter() - t0
        after = await client.get("/metrics")
    (s1, c1), (s0, c0) = _batch_totals(after.text), _batch_totals(before.text)
    return Result(0, 0.0, len(latencies), errors, seconds, latencies, s1 - s0, c1 - c0)


def _batch_totals(text: str) -> tuple[float, float]:
    """Images and model calls so far: the sum and count of the ``vestis_batch_size`` histogram."""
    s = {x.name: x.value for f in text_string_to_metric_families(text) for x in f.samples if not x.labels}
    return s.get("vestis_batch_size_sum", 0.0), s.get("vestis_batch_size_count", 0.0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/vestis-bench/serve"))
    p.add_argument("--requests", type=int, default=400, help="requests per setting (after the warm-up)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per setting at most")
    p.add_argument("--rounds", type=int, default=4, help="alternate the settings this many times")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="for the batched settings")
    p.add_argument("--image-px", type=int, default=256, help="side of the catalog JPEGs sent")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)

    data = a.work / f"synth-{a.image_px}"
    if not (data / "manifest.csv").is_file():
        generate_catalog(data, n=64, size=a.image_px, seed=0)
    images = [f.read_bytes() for f in sorted((data / "images").glob("*.jpg"))[:64]]
    cfg = load_config("default")
    taxonomy = synthetic_taxonomy()
    torch.manual_seed(0)
    model = create_model(cfg.model, taxonomy).eval()
    d = cfg.data
    preprocessing = {"image_size": d.image_size, "mean": list(d.mean), "std": list(d.std), "pad_value": d.pad_value}
    predictor = Predictor.from_model(model, taxonomy=taxonomy, preprocessing=preprocessing, device=a.device)

    # one server per setting, all started up front; rounds alternate between them so that a change in the
    # machine's load (it may be shared) hits every setting alike
    settings = [(b, a.max_wait_ms if b > 1 else 0.0) for b in a.batch_sizes]
    results = [Result(b, w, 0, 0, 0.0, []) for b, w in settings]
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(_Server(create_app(predictor, ServiceConfig(max_batch_size=b, max_wait_ms=w))))
            for b, w in settings
        ]
        for k in range(a.rounds):
            for i, server in enumerate(servers):
                n = a.requests // a.rounds + (1 if k < a.requests % a.rounds else 0)
                r = asyncio.run(_load(server.url, images, n, a.duration / a.rounds, a.concurrency))
                acc = results[i]
                acc.done, acc.errors, acc.seconds = acc.done + r.done, acc.errors + r.errors, acc.seconds + r.seconds
                acc.latencies += r.latencies
                acc.batch_images, acc.batch_calls = acc.batch_images + r.batch_images, acc.batch_calls + r.batch_calls
                print(f"round {k + 1}, max batch {settings[i][0]}: {r.throughput:.1f} req/s", flush=True)
    for r in results:
        print(
            f"max batch {r.max_batch_size:>3}, wait {r.max_wait_ms:g} ms: {r.throughput:7.1f} req/s, "
            f"p50 {r.pct(50):7.1f} ms, p99 {r.pct(99):7.1f} ms, mean batch {r.mean_batch:5.2f}, {r.done} done, "
            f"{r.errors} errors",
            flush=True,
        )

    base = results[0].throughput
    rows = "\n".join(
        f"| {r.max_batch_size} | {r.max_wait_ms:g} | {r.done} | {r.seconds:.1f} | {r.throughput:.1f} | "
        f"{r.throughput / base:.2f}x | {r.pct(50):.1f} | {r.pct(99):.1f} | {r.mean_batch:.2f} | {r.errors} |"
        for r in results
    )
    body = (
        f"`{cfg.model.name}` on `{cfg.model.backbone}` (the `default` preset, random init), {d.image_size} px input, "
        f"{len(taxonomy)} attributes, PyTorch on {predictor.device}, fp32. {a.concurrency} concurrent clients "
        f"(`httpx.AsyncClient`) post one {a.image_px} px catalog JPEG per request (multipart) to `/v1/attributes` "
        f"on loopback, back to back; at most {a.requests} requests or {a.duration:g} s per setting, in "
        f"{a.rounds} rounds alternating the settings (each after {2 * a.concurrency} warm-up requests). Client "
        "and uvicorn share one process. Latency is per request, seen by the client; mean batch = images per "
        "model call (from `/metrics`).\n\n"
        "| max batch | max wait (ms) | requests | seconds | req/s | speed-up | p50 (ms) | p99 (ms) | mean batch "
        "| errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" + rows + "\n"
    )
    print(body)
    if not a.no_write:
        print(write_section("serve", "HTTP service: micro-batching under load", body))


if __name__ == "__main__":
    main()
