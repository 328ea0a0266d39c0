"""Substitute search end to end on fashion-product: index build speed, /v1/search under load, and quality parity.

The model is a row of bench/embeddings.py (trained there, or here with the same settings and work folder, so both
benchmarks score the same checkpoint). Its test split is indexed with ``build_index`` (what ``vestis index``
runs; images decoded from their files, prototypes from the training split's rows) and searched by the product's
three doors:

- **quality**: the embeddings benchmark's top-30 query and query + manipulation accuracy, recomputed (a) by
  ``retrieval_metrics`` on the index's own vectors and prototypes, (b) through ``CatalogIndex.search`` for every
  query of the protocol, (c) through ``POST /v1/search`` (in-process) for every query and (d) through ``vestis
  search --json`` (a process per query) for a sample, each hit list checked against (b). The API and the CLI
  leave an id query out of its own hits (a user never wants the item back); the protocol keeps a manipulated query
  in the gallery, so those rows are also given as the protocol computes them (``exclude_query=False``);
- **speed**: images/s of the index build over the whole catalog (decode included), and ``vestis serve MODEL
  --index INDEX`` in its own process under a bounded load: ``--clients`` concurrent clients (each sends its next
  request when the previous one is answered) in ``--client-procs`` separate processes, for id queries with one
  manipulation and for image-upload queries (decode + model + search), with p50 / p99 latency::

    python bench/search_e2e.py                       # trains the attribute-based row if needed
    python bench/search_e2e.py --model datrnet       # the DAtRNet pretrained batch-all row
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_DATA, write_section
from embeddings import EPOCHS, K, rows, run_row
from transfer import prepare, with_split_column
from vestis.config import load_config
from vestis.eval.retrieval import manipulation_queries, stack_codes
from vestis.eval.substitutes import retrieval_metrics
from vestis.io import atomic_write_text
from vestis.retrieval.catalog_index import CatalogIndex
from vestis.retrieval.index_build import build_index

MODELS = {"attribute-based": 0, "datrnet": 8}  # row numbers of bench/embeddings.py
SECTIONS = ("build", "quality", "load")


def split_manifests(catalog: Path) -> dict[str, Path]:
    """``train.csv`` and ``test.csv`` beside the catalog (same folder: relative image paths stay valid)."""
    out = {s: catalog.parent / f"{s}.csv" for s in ("train", "test")}
    with catalog.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        recs = list(reader)
        cols = reader.fieldnames or []
    for split, path in out.items():
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(r for r in recs if r["split"] == split)
        os.replace(tmp, path)
    return out


def item_codes(idx: CatalogIndex) -> dict[str, np.ndarray]:
    """The index items' label codes per attribute (``-1`` unlabelled), as value_codes numbers single-label values."""
    out = {}
    for a in idx.taxonomy:
        if a.kind != "single":
            raise SystemExit(f"{a.name}: a multi-label attribute; this benchmark scores single-label catalogs")
        out[a.name] = np.array([-1 if v is None else a.index(v) for v in idx.items.labels[a.name]], np.int64)
    return out


def protocol_queries(idx: CatalogIndex, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """(label matrix, rows kept as plain queries, manipulation queries) of the embeddings benchmark's protocol."""
    codes = item_codes(idx)
    labels = stack_codes(codes, idx.taxonomy.names)  # (N, T)
    _, inverse, counts = np.unique(labels, axis=0, return_inverse=True, return_counts=True)
    keep = np.flatnonzero(counts[inverse.reshape(-1)] > 1)
    return labels, keep, manipulation_queries(labels, labels, seed=seed)


def success(hit_ids: list[str], idx: CatalogIndex, labels: np.ndarray, want: np.ndarray) -> bool:
    return any(np.array_equal(labels[idx.row(h)], want) for h in hit_ids[:K])


def quality(idx: CatalogIndex, index_dir: Path, ckpt: Path, cli_sample: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from vestis.inference.predictor import Predictor
    from vestis.service import create_app

    names = idx.taxonomy.names
    labels, keep, manip = protocol_queries(idx)
    v = np.asarray(idx.vectors)
    ends = np.cumsum([d for _, d in idx.layout])
    gallery = {a: v[:, e - d : e] for (a, d), e in zip(idx.layout, ends, strict=True)}
    protos = idx.prototypes
    ref = {a: protos.vectors[a] for a in names}
    ref_codes = {a: np.asarray(protos.values[a]) for a in names}
    direct = retrieval_metrics(gallery, item_codes(idx), ref, ref_codes, names, k=K)["summary"]
    res: dict[str, Any] = {
        "n_gallery": len(idx),
        "n_queries": len(keep),
        "n_manipulation": len(manip),
        "metrics_on_index_vectors": {"query": direct[f"query_top{K}"], "manipulation": direct[f"manipulation_top{K}"]},
    }
    ids = idx.items.ids

    def change(q: Any) -> dict[str, str]:
        a = names[q.attribute]
        return {a: idx.taxonomy[a].values[q.value]}

    t0 = time.perf_counter()
    lib_q = [success([h.id for h in idx.search(ids[r], k=K)], idx, labels, labels[r]) for r in keep]
    lib_m_user, lib_m_proto, lib_hits = [], [], []
    for q in manip:
        hits = [h.id for h in idx.search(ids[q.query], set=change(q), k=K)]
        lib_hits.append(hits)
        lib_m_user.append(success(hits, idx, labels, q.target))
        proto = [h.id for h in idx.search(ids[q.query], set=change(q), k=K, exclude_query=False)]
        lib_m_proto.append(success(proto, idx, labels, q.target))
    res["library"] = {
        "query": float(np.mean(lib_q)),
        "manipulation": float(np.mean(lib_m_user)),
        "manipulation_query_kept": float(np.mean(lib_m_proto)),
        "seconds_per_search": (time.perf_counter() - t0) / (len(keep) + 2 * len(manip)),
    }
    predictor = Predictor.from_path(ckpt, device="cpu")
    with TestClient(create_app(predictor, index=idx)) as client:
        api_q, api_m, same = [], [], 0
        for r in keep:
            hits = [h["id"] for h in client.post("/v1/search", json={"id": ids[r], "k": K}).json()["hits"]]
            api_q.append(success(hits, idx, labels, labels[r]))
        for q, lh in zip(manip, lib_hits, strict=True):
            body = {"id": ids[q.query], "set": change(q), "k": K}
            hits = [h["id"] for h in client.post("/v1/search", json=body).json()["hits"]]
            api_m.append(success(hits, idx, labels, q.target))
            same += hits == lh
    res["api"] = {"query": float(np.mean(api_q)), "manipulation": float(np.mean(api_m)), "same_hits": same}
    rng = np.random.default_rng(0)
    sample = rng.choice(len(manip), size=min(cli_sample, len(manip)), replace=False)
    cli_same = 0
    for i in sample:
        q = manip[int(i)]
        a, val = next(iter(change(q).items()))
        out = subprocess.run(
            [sys.executable, "-m", "vestis", "search", str(index_dir), "--id", ids[q.query], "--set", f"{a}={val}",
             "--k", str(K), "--json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        cli_same += [h["id"] for h in json.loads(out.stdout)] == lib_hits[int(i)]
    res["cli"] = {"sampled": len(sample), "same_hits": cli_same}
    return res


# --- load ---------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client_proc(url: str, bodies: list[dict[str, Any]], clients: int, seconds: float, out: Any) -> None:
    import httpx

    async def one(client: httpx.AsyncClient, i: int, lat: list[float], errors: list[int], stop: float) -> None:
        n = i
        while time.perf_counter() < stop:
            body = bodies[n % len(bodies)]
            n += clients
            t = time.perf_counter()
            r = await client.post(url, json=body)
            if r.status_code == 200:
                lat.append(time.perf_counter() - t)
            else:
                errors.append(r.status_code)

    async def run() -> tuple[list[float], list[int]]:
        lat: list[float] = []
        errors: list[int] = []
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
            stop = time.perf_counter() + seconds
            await asyncio.gather(*(one(client, i, lat, errors, stop) for i in range(clients)))
        return lat, errors

    out.put(asyncio.run(run()))


def load(url: str, bodies: list[dict[str, Any]], clients: int, procs: int, seconds: float) -> dict[str, Any]:
    """``clients`` concurrent closed-loop clients spread over ``procs`` processes, for ``seconds``."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    per = [clients // procs + (i < clients % procs) for i in range(procs)]
    ps = [ctx.Process(target=_client_proc, args=(url, bodies[i::procs], n, seconds, q)) for i, n in enumerate(per)]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    got = [q.get() for _ in ps]
    for p in ps:
        p.join()
    wall = time.perf_counter() - t0
    lat = np.array([x for g in got for x in g[0]]) * 1e3  # answered requests only
    codes = [c for g in got for c in g[1]]
    return {
        "clients": clients,
        "answered": int(lat.size),
        "shed": sum(c == 503 for c in codes),
        "errors": sum(c != 503 for c in codes),
        "ok_per_s": lat.size / seconds,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "wall_s": wall,
    }


def serve_and_load(ckpt: Path, index_dir: Path, idx: CatalogIndex, args: argparse.Namespace) -> list[dict[str, Any]]:
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "vestis", "serve", str(ckpt), "--index", str(index_dir), "--port", str(port),
           "--host", "127.0.0.1", "--log-level", "warning"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"vestis serve exited: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        _, _, manip = protocol_queries(idx)
        names, ids = idx.taxonomy.names, idx.items.ids
        by_id = [
            {"id": ids[q.query], "set": {names[q.attribute]: idx.taxonomy[names[q.attribute]].values[q.value]}, "k": K}
            for q in manip
        ]
        images = []
        for r in range(min(64, len(idx))):
            raw = _image(idx, r)
            images.append({"image": base64.b64encode(raw.read_bytes()).decode(), "k": K})
        out = []
        for kind, bodies in (("id + manipulation", by_id), ("image upload", images)):
            for clients in args.clients:
                r = load(f"{base}/v1/search", bodies, clients, args.client_procs, args.seconds)
                r["query"] = kind
                print(f"  {kind:18s} {clients:3d} clients  {r['ok_per_s']:7.1f} answered/s  p50 {r['p50_ms']:7.1f} ms  "
                      f"p99 {r['p99_ms']:7.1f} ms  shed {r['shed']}  errors {r['errors']}", flush=True)  # fmt: skip
                out.append(r)
        return out
    finally:
        server.terminate()
        server.wait(timeout=30)


def _image(idx: CatalogIndex, row: int) -> Path:
    p = Path(idx.items.images[row])
    return p if p.is_absolute() else (idx.catalog_root or Path.cwd()) / p


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=list(MODELS), default="attribute-based")
    p.add_argument("--work", type=Path, default=Path("/tmp/vestis-bench/embeddings"), help="bench/embeddings.py's")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--client-procs", type=int, default=2, help="processes the clients are spread over")
    p.add_argument("--seconds", type=float, default=20.0, help="duration of each load run")
    p.add_argument("--cli-sample", type=int, default=20, help="manipulation queries also run through `vestis search`")
    p.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="what to measure now; the others are read from the work folder's results.json of an earlier run",
    )
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    name = "fashion-product"
    if not (SHARED_DATA / name).exists():
        raise SystemExit(f"real data not found at {SHARED_DATA / name}")
    work = a.work / name
    catalog = with_split_column(prepare(name, work), load_config("default"), work)
    label, preset, over = rows(a.size, 128)[MODELS[a.model]]
    size = [f"data.image_size={a.size}"] if not any(o.startswith("data.image_size") for o in over) else []
    bench = run_row(label, preset, [*size, *over, f"train.epochs={EPOCHS[name]}"], catalog, work)["test"]["summary"]
    from embeddings import _slug

    ckpt = work / _slug(label) / "best.ckpt"
    parts = split_manifests(catalog)
    e2e = work / "e2e" / a.model
    store = e2e / "results.json"
    res: dict[str, Any] = json.loads(store.read_text()) if store.is_file() else {}
    if "build" in a.sections or not (e2e / "test-index" / "index.json").is_file():
        print("building the test-split index (gallery) ...", flush=True)
        test = build_index(ckpt, parts["test"], e2e / "test-index", prototypes=parts["train"], restart=True, workers=2)
        print("building the whole-catalog index (speed) ...", flush=True)
        full = build_index(ckpt, catalog, e2e / "catalog-index", restart=True, workers=2)
        print(f"  {full.count} items, {full.images_per_s:.1f} images/s", flush=True)
        res["build"] = {"count": full.count, "images_per_s": full.images_per_s, "test_images_per_s": test.images_per_s}
    with CatalogIndex.open(e2e / "test-index") as idx:
        if "quality" in a.sections:
            res["quality"] = quality(idx, e2e / "test-index", ckpt, a.cli_sample)
            print(json.dumps(res["quality"], indent=1), flush=True)
        if "load" in a.sections:
            res["load"] = {"rows": serve_and_load(ckpt, e2e / "test-index", idx, a), "procs": a.client_procs,
                           "seconds": a.seconds}  # fmt: skip
    atomic_write_text(store, json.dumps(res, indent=1))
    missing = [s for s in SECTIONS if s not in res]
    if missing:
        print(f"stored in {store}; run the sections {missing} too for the report")
        return
    qual, speed, built = res["quality"], res["load"]["rows"], res["build"]
    lib, api = qual["library"], qual["api"]
    f = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [
        f"Model: `{label}` of bench/embeddings.py ({a.size} px), the same checkpoint. Gallery: the "
        f"{qual['n_gallery']} test-split images, indexed from their files by `build_index` (FAISS flat), prototypes "
        f"from the training split; {qual['n_queries']} plain and {qual['n_manipulation']} manipulation queries, "
        "the protocol of the embeddings benchmark.",
        "",
        f"| path | query top-{K} | query + manipulation top-{K} |",
        "|---|---:|---:|",
        f"| bench/embeddings.py (cached float16 trunk features) | {f(bench[f'query_top{K}'])} | "
        f"{f(bench[f'manipulation_top{K}'])} |",
        f"| retrieval_metrics on the index's vectors and prototypes | {f(qual['metrics_on_index_vectors']['query'])} "
        f"| {f(qual['metrics_on_index_vectors']['manipulation'])} |",
        f"| CatalogIndex.search, manipulated query kept in the gallery (the protocol) | {f(lib['query'])} | "
        f"{f(lib['manipulation_query_kept'])} |",
        f"| CatalogIndex.search, query left out (what users get) | {f(lib['query'])} | {f(lib['manipulation'])} |",
        f"| POST /v1/search (in-process), query left out | {f(api['query'])} | {f(api['manipulation'])} |",
        "",
        f"The API returned the library's hit list for {api['same_hits']} of {qual['n_manipulation']} manipulation "
        f"queries; `vestis search --json` for {qual['cli']['same_hits']} of {qual['cli']['sampled']} sampled. "
        f"One library search took {lib['seconds_per_search'] * 1e3:.2f} ms.",
        "",
        f"Index build over the whole catalog ({built['count']} images, decode included, 2 decode workers): "
        f"**{built['images_per_s']:.1f} images/s** (the test split alone: {built['test_images_per_s']:.1f}).",
        "",
        f"`vestis serve MODEL --index INDEX` in its own process; closed-loop clients in {res['load']['procs']} "
        f"separate processes on the same 2 cores, {res['load']['seconds']:.0f} s per row, k = {K}. `answered/s` "
        "counts 200 responses, and the latencies are theirs; `shed` counts the 503s with Retry-After that the "
        "service answers at once when a request would wait longer than `--max-queue-wait-ms` (2 s):",
        "",
        "| query | clients | answered/s | p50 ms | p99 ms | shed | other errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['query']} | {r['clients']} | {r['ok_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['shed']} | {r['errors']} |"
            for r in speed
        ),
    ]
    body = "\n".join(lines)
    print(body)
    if not a.no_write:
        write_section(f"search-e2e-{a.model}", f"Substitute search end to end on fashion-product ({a.model})", body)


if __name__ == "__main__":
    main()
