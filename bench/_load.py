"""A closed-loop HTTP load generator in separate processes, and a do-nothing server for its own ceiling.

Shared by the service benchmarks: the clients run in spawned processes so that their Python (request encoding,
response parsing) never shares an interpreter with the server under test, and the same clients against
:class:`DummyHTTPServer` show how fast they can go at all, so a reader sees whether the client limits a number.
"""

from __future__ import annotations

import time
from typing import Any


def free_port() -> int:
    """A TCP port free on loopback now (another process could take it before it is used; unlikely here)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client_proc(
    base_url: str,
    requests: list[dict[str, Any]],
    clients: int,
    budget: int | None,
    seconds: float,
    warmup: int,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    """One client process: ``clients`` closed-loop clients on one event loop (see :func:`closed_loop_load`)."""
    import asyncio

    import httpx

    async def run() -> tuple[list[float], list[int], float, float]:
        lat: list[float] = []
        codes: list[int] = []
        issued = 0
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0) as client:
            # warm-up: connections opened, the server's first batches and allocations, before the clock starts
            await asyncio.gather(*(client.request(**requests[i % len(requests)]) for i in range(warmup)))
            ready.wait()  # every process warmed up and the caller has read its "before" figures
            go.wait()
            start = time.perf_counter()
            stop = start + seconds

            async def one() -> None:
                nonlocal issued
                while (budget is None or issued < budget) and time.perf_counter() < stop:
                    req = requests[issued % len(requests)]
                    issued += 1
                    t = time.perf_counter()
                    r = await client.request(**req)
                    if r.status_code == 200:
                        lat.append(time.perf_counter() - t)
                    else:
                        codes.append(r.status_code)

            await asyncio.gather(*(one() for _ in range(clients)))
            return lat, codes, start, time.perf_counter()

    out.put(asyncio.run(run()))


def closed_loop_load(
    base_url: str,
    requests: list[dict[str, Any]],
    clients: int,
    procs: int,
    seconds: float,
    *,
    max_requests: int | None = None,
    warmup: int = 0,
    on_ready: Any = None,
) -> dict[str, Any]:
    """``clients`` closed-loop HTTP clients spread over ``procs`` separate (spawned) processes.

    Each client sends its next request when the previous one is answered, until ``max_requests`` requests are
    issued in all or ``seconds`` have passed. The clients live in their own processes so that their Python
    (request encoding, response parsing) does not share an interpreter with the server under test. Every
    process first sends its share of ``warmup`` requests; then ``on_ready()`` runs in the caller (to read the
    server's counters), and all processes start the measured part together.

    Args:
        base_url: ``http://host:port``.
        requests: keyword arguments of ``httpx.AsyncClient.request`` (``method``, ``url`` and ``files`` /
            ``json`` / ``content``), used in turn; picklable.
        clients: concurrent clients in all.
        procs: client processes (at most ``clients``).
        seconds: the longest the measured part may run.
        max_requests: requests issued in all (split over the processes); ``None``: bounded by time only.
        warmup: requests sent before the measured part (split over the processes).
        on_ready: called once all processes are warmed up, before the measured part starts.

    Returns:
        ``answered`` (200s), ``latencies`` (seconds, of the 200s), ``codes`` (status of every other answer),
        ``seconds`` (from the first process's start to the last one's end), ``ok_per_s``, ``p50_ms``, ``p99_ms``.
    """
    import multiprocessing as mp

    import numpy as np

    procs = max(1, min(procs, clients))
    ctx = mp.get_context("spawn")
    q, ready, go = ctx.Queue(), ctx.Barrier(procs + 1), ctx.Event()
    per = [clients // procs + (i < clients % procs) for i in range(procs)]
    share = [None if max_requests is None else max_requests // procs + (i < max_requests % procs) for i in range(procs)]
    warm = [warmup // procs + (i < warmup % procs) for i in range(procs)]
    ps = [
        ctx.Process(
            target=_client_proc,
            args=(base_url, requests[i::procs] or requests, n, share[i], seconds, w, ready, go, q),
            daemon=True,
        )
        for i, (n, w) in enumerate(zip(per, warm, strict=True))
    ]
    for p in ps:
        p.start()
    try:
        ready.wait(timeout=300)
        if on_ready is not None:
            on_ready()
        go.set()
        got = [q.get(timeout=seconds + 300) for _ in ps]
    finally:
        for p in ps:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    lat = [x for g in got for x in g[0]]
    span = max(g[3] for g in got) - min(g[2] for g in got)
    ms = np.asarray(lat) * 1e3
    return {
        "answered": len(lat),
        "latencies": lat,
        "codes": [c for g in got for c in g[1]],
        "seconds": span,
        "ok_per_s": len(lat) / span if span > 0 else float("nan"),
        "p50_ms": float(np.percentile(ms, 50)) if lat else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if lat else float("nan"),
    }


def _dummy_server_proc(port: int, started: Any) -> None:
    """A do-nothing HTTP/1.1 server: reads each request (headers and ``Content-Length`` body), answers ``{}``."""
    import asyncio

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its connection
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        started.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class DummyHTTPServer:
    """:func:`_dummy_server_proc` in its own spawned process, for the load generator's own ceiling."""

    def __enter__(self) -> str:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        port, started = free_port(), ctx.Event()
        self.proc = ctx.Process(target=_dummy_server_proc, args=(port, started), daemon=True)
        self.proc.start()
        if not started.wait(60):
            self.proc.terminate()
            raise RuntimeError("the dummy HTTP server did not start")
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.join(10)
