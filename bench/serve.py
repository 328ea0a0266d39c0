"""Load test of ``vestis serve`` on loopback: throughput and latency with and without micro-batching.

Each batching setting is its own ``vestis serve`` process on 127.0.0.1 (a free port), serving a checkpoint of the
``default`` preset's model, untrained, on the synthetic taxonomy. ``--concurrency`` closed-loop clients spread
over ``--client-procs`` separate processes (``httpx.AsyncClient`` each, :func:`_load.closed_loop_load`) post one
catalog JPEG per request (multipart), back to back, until ``--requests`` requests are done or ``--duration``
seconds have passed; each setting gets the same warm-up and the same bound. The same clients then post the same
requests to a do-nothing HTTP server (:class:`_load.DummyHTTPServer`): the client's own ceiling, which the
service's rates are read against::

    python bench/serve.py --requests 400 --duration 60 --rounds 4 --concurrency 16 --batch-sizes 1 16
    python bench/serve.py --requests 40 --duration 10 --rounds 1 --no-write     # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from _common import write_section
from _load import DummyHTTPServer, closed_loop_load, free_port
from vestis.config import load_config
from vestis.data.synthetic import generate_catalog, synthetic_taxonomy
from vestis.models import create_model
from vestis.train.checkpoint import save_checkpoint


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
    codes: Counter[int] = field(default_factory=Counter)  # HTTP status of every error (503: shed)

    @property
    def mean_batch(self) -> float:
        return self.batch_images / self.batch_calls if self.batch_calls else float("nan")

    @property
    def throughput(self) -> float:
        return self.done / self.seconds if self.seconds else float("nan")

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


class _Service:
    """``vestis serve CHECKPOINT`` in its own process on a free loopback port, ready (``/readyz``) on enter."""

    def __init__(self, checkpoint: Path, max_batch_size: int, max_wait_ms: float, device: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "vestis", "serve", str(checkpoint), "--host", "127.0.0.1",
                    "--port", str(self.port), "--max-batch-size", str(max_batch_size), "--max-wait-ms",
                    f"{max_wait_ms:g}", "--device", device, "--log-level", "warning"]  # fmt: skip

    def __enter__(self) -> _Service:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"vestis serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.2)
        self.__exit__()
        raise SystemExit(f"vestis serve on port {self.port} was not ready after 300 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _measure(url: str, requests: list[dict], n: int, seconds: float, a: argparse.Namespace) -> Result:
    """One bounded load run against ``url``, with the batch counters of ``/metrics`` around its measured part."""
    before: list[tuple[float, float]] = []
    r = closed_loop_load(
        url, requests, a.concurrency, a.client_procs, seconds, max_requests=n, warmup=2 * a.concurrency,
        on_ready=lambda: before.append(_batch_totals(httpx.get(f"{url}/metrics").text)),
    )  # fmt: skip
    (s1, c1), (s0, c0) = _batch_totals(httpx.get(f"{url}/metrics").text), before[0]
    return Result(
        0, 0.0, r["answered"], len(r["codes"]), r["seconds"], r["latencies"], s1 - s0, c1 - c0, Counter(r["codes"])
    )


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
    p.add_argument("--client-procs", type=int, default=2, help="processes the clients are spread over")
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
    checkpoint = save_checkpoint(a.work / "default.ckpt", model=model, config=cfg, taxonomy=taxonomy)
    requests = [
        {"method": "POST", "url": "/v1/attributes", "files": {"file": (f"{i}.jpg", img, "image/jpeg")}}
        for i, img in enumerate(images)
    ]

    # one service per setting, all started up front; rounds alternate between them so that a change in the
    # machine's load (it may be shared) hits every setting alike
    settings = [(b, a.max_wait_ms if b > 1 else 0.0) for b in a.batch_sizes]
    results = [Result(b, w, 0, 0, 0.0, []) for b, w in settings]
    with contextlib.ExitStack() as stack:
        services = [stack.enter_context(_Service(checkpoint, b, w, a.device)) for b, w in settings]
        for k in range(a.rounds):
            for i, service in enumerate(services):
                n = a.requests // a.rounds + (1 if k < a.requests % a.rounds else 0)
                r = _measure(service.url, requests, n, a.duration / a.rounds, a)
                acc = results[i]
                acc.done, acc.errors, acc.seconds = acc.done + r.done, acc.errors + r.errors, acc.seconds + r.seconds
                acc.latencies += r.latencies
                acc.codes += r.codes
                acc.batch_images, acc.batch_calls = acc.batch_images + r.batch_images, acc.batch_calls + r.batch_calls
                print(f"round {k + 1}, max batch {settings[i][0]}: {r.throughput:.1f} req/s", flush=True)
    # the client's own ceiling: the same clients, processes and requests against a server that does nothing
    with DummyHTTPServer() as url:
        bound = max(a.requests, 20 * a.concurrency)
        ceiling = closed_loop_load(
            url, requests, a.concurrency, a.client_procs, a.duration / a.rounds, max_requests=bound,
            warmup=2 * a.concurrency,
        )  # fmt: skip
    print(
        f"client ceiling (do-nothing server): {ceiling['ok_per_s']:.1f} req/s, p50 {ceiling['p50_ms']:.2f} ms, "
        f"p99 {ceiling['p99_ms']:.2f} ms, {ceiling['answered']} done",
        flush=True,
    )
    for r in results:
        print(
            f"max batch {r.max_batch_size:>3}, wait {r.max_wait_ms:g} ms: {r.throughput:7.1f} req/s, "
            f"p50 {r.pct(50):7.1f} ms, p99 {r.pct(99):7.1f} ms, mean batch {r.mean_batch:5.2f}, {r.done} done, "
            f"{r.errors} errors {dict(r.codes) or ''}",
            flush=True,
        )

    base = results[0].throughput
    rows = "\n".join(
        f"| {r.max_batch_size} | {r.max_wait_ms:g} | {r.done} | {r.seconds:.1f} | {r.throughput:.1f} | "
        f"{r.throughput / base:.2f}x | {r.pct(50):.1f} | {r.pct(99):.1f} | {r.mean_batch:.2f} | {r.errors} |"
        for r in results
    )
    errors = "".join(
        f"Errors of max batch {r.max_batch_size} by HTTP status: "
        + ", ".join(f"{c}: {n}" for c, n in sorted(r.codes.items()))
        + " (503: shed, the request would have waited longer than `--max-queue-wait-ms`).\n\n"
        for r in results
        if r.codes
    )
    best = max(r.throughput for r in results)
    limits = (
        "the client does not limit these numbers"
        if ceiling["ok_per_s"] > 2 * best
        else "close to the service's rates, so the client may limit them"
    )
    own = (
        "The client's own ceiling: the same clients, processes and requests against a do-nothing HTTP server (it "
        f"reads each request and answers `{{}}`) reach **{ceiling['ok_per_s']:.1f} req/s** (p50 "
        f"{ceiling['p50_ms']:.2f} ms, p99 {ceiling['p99_ms']:.2f} ms, {ceiling['answered']} requests), "
        f"{ceiling['ok_per_s'] / best:.1f}x the best setting above: {limits}.\n"
    )
    body = (
        f"`{cfg.model.name}` on `{cfg.model.backbone}` (the `default` preset as created, untrained heads), "
        f"{d.image_size} px input, "
        f"{len(taxonomy)} attributes, PyTorch on {a.device}, fp32, served by `vestis serve CHECKPOINT` in its own "
        f"process (one per setting). {a.concurrency} concurrent closed-loop clients (`httpx.AsyncClient`) in "
        f"{a.client_procs} separate processes post one {a.image_px} px catalog JPEG per request (multipart) to "
        f"`/v1/attributes` on loopback, back to back; at most {a.requests} requests or {a.duration:g} s per "
        f"setting, in {a.rounds} rounds alternating the settings (each after {2 * a.concurrency} warm-up "
        "requests). Latency is per request, seen by the client; mean batch = images per model call (from "
        "`/metrics`). Client and service share the machine's cores.\n\n"
        "| max batch | max wait (ms) | requests | seconds | req/s | speed-up | p50 (ms) | p99 (ms) | mean batch "
        "| errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" + rows + "\n\n" + errors + own
    )
    print(body)
    if not a.no_write:
        print(write_section("serve", "HTTP service: micro-batching under load", body))


if __name__ == "__main__":
    main()
