"""``vestis serve``: the HTTP API and the web page for a model (FastAPI + uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vestis.cli._app import TrustCheckpointOpt, command, echo
from vestis.errors import VestisError
from vestis.service.config import ServiceConfig

_D = ServiceConfig()
_SERVE_OPSET = 17  # vestis.service.startup.SERVE_OPSET, written out (tests/service/test_onnx_runtime.py)
_RUNTIMES = ("onnx", "torch")  # vestis.service.startup.RUNTIMES, written out (tests/service/test_onnx_runtime.py)


@command("serve")
def serve_cmd(
    model: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint (.ckpt) or an ONNX file written by `vestis export` (embedding models: with --index), "
            "or an outfit pipeline: a file from `vestis pipeline` or a folder from `vestis export`."
        ),
    ],
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface; there is no authentication).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port).")] = 8000,
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", min=1, help="Most images per model call; 1 turns micro-batching off.")
    ] = _D.max_batch_size,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0, help="How long an image may wait for others to share its batch.")
    ] = _D.max_wait_ms,
    batch_close: Annotated[
        str,
        typer.Option(
            "--batch-close",
            help="early: a batch runs as soon as no other request is still decoding its images (a lone request "
            "waits for nothing); deadline: it waits up to --max-wait-ms for any request.",
        ),
    ] = _D.batch_close,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Largest request body, in MiB (413 above).")
    ] = _D.max_upload_mb,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Largest image, width x height, checked before decoding (413).")
    ] = _D.max_pixels,
    max_images: Annotated[
        int, typer.Option("--max-images", min=1, help="Most images per request (413).")
    ] = _D.max_images,
    max_request_pixels: Annotated[
        int, typer.Option("--max-request-pixels", min=1, help="Most pixels in one request, all images together (413).")
    ] = _D.max_request_pixels,
    decode_budget_mb: Annotated[
        float, typer.Option("--decode-budget-mb", min=1, help="Decoded image memory of all requests at once, MiB.")
    ] = _D.decode_budget_mb,
    max_json_depth: Annotated[
        int, typer.Option("--max-json-depth", min=2, help="Deepest nesting of a JSON body, checked before parsing.")
    ] = _D.max_json_depth,
    max_queue_wait_ms: Annotated[
        float, typer.Option("--max-queue-wait-ms", min=1, help="Answer 503 + Retry-After if the wait would be longer.")
    ] = _D.max_queue_wait_ms,
    decode_workers: Annotated[
        int | None,
        typer.Option(
            "--decode-workers", min=1, help="Threads decoding uploads (default: one per usable CPU core, 2 to 16)."
        ),
    ] = _D.decode_workers,
    decode_queue: Annotated[
        int,
        typer.Option(
            "--decode-queue", min=0, help="Images that may wait for a busy decode thread; one more is answered 503."
        ),
    ] = _D.decode_queue,
    runtime: Annotated[
        str | None,
        typer.Option(
            "--runtime",
            help="onnx: export a checkpoint to ONNX at start-up (parity checked) and run ONNX Runtime; torch: PyTorch "
            "(default: onnx for a classifier checkpoint when onnxruntime is installed, torch for a combined "
            "per-attribute run; an ONNX file is always onnx; embedding models and outfit pipelines run as their file "
            "says).",
        ),
    ] = None,
    opset: Annotated[
        int,
        typer.Option(
            "--opset",
            min=7,
            help="ONNX opset of the start-up export: below 18 the TorchScript exporter (quick to start), 18 and "
            "above the dynamo exporter (as `vestis export` by default).",
        ),
    ] = _SERVE_OPSET,
    index: Annotated[
        Path | None,
        typer.Option(
            "--index",
            help="A catalog index built from MODEL by `vestis index`: adds /v1/search (default: none, no search).",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: CUDA if present).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    trust_checkpoint: TrustCheckpointOpt = False,
) -> None:
    """Serve MODEL over HTTP: /v1/attributes, /v1/heatmap, /v1/taxonomy, health, metrics and a web page at /.

    A classifier checkpoint runs on ONNX Runtime: it is exported at start-up (the graph `vestis export` writes, fp32)
    and checked against PyTorch on a few generated images, and start-up stops if they disagree; --runtime torch
    serves it on PyTorch. GET /v1/taxonomy names the runtime.

    An outfit pipeline (a detector and a stage-2 model) serves POST /v1/outfit instead (the garments of a photo:
    box, object type, category and attributes of each), GET /v1/model and the page, which draws the boxes.

    With --index, also substitute search: /v1/search, /v1/items/{id} and its thumbnail, and the page's panel.
    An embedding model (csn, csn_fixed, triplet, datrnet) needs --index: /v1/attributes then answers from its
    recognition columns, else from the index's nearest prototypes (marked "source": "prototype"), and there is
    no /v1/heatmap.
    """
    try:
        import uvicorn
    except ImportError:
        raise VestisError("vestis serve needs uvicorn: pip install 'vestis[serve]'") from None
    from vestis.service import create_app

    if runtime is not None and runtime not in _RUNTIMES:
        raise typer.BadParameter(f"expected one of {', '.join(_RUNTIMES)}, got {runtime!r}", param_hint="--runtime")
    config = ServiceConfig(
        max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, batch_close=batch_close, max_upload_mb=max_upload_mb,
        max_pixels=max_pixels, max_images=max_images, max_request_pixels=max_request_pixels,
        decode_budget_mb=decode_budget_mb, max_json_depth=max_json_depth, max_queue_wait_ms=max_queue_wait_ms,
        decode_workers=decode_workers, decode_queue=decode_queue,
    )  # fmt: skip
    from vestis.inference.pipeline_format import pipeline_kind

    if pipeline_kind(model) is not None:
        if runtime is not None:
            raise VestisError(
                f"{model}: --runtime: an outfit pipeline runs as its file says (a pipeline file on PyTorch, a folder "
                "from `vestis export` on ONNX Runtime)"
            )
        _serve_outfit(model, config, index=index, device=device, host=host, port=port, log_level=log_level)
        return
    from vestis.inference.combined import is_combined
    from vestis.service.embedding import embedding_model_name

    # per-attribute models combined into one (combined.json or its run folder) are classifiers
    embedding = None if is_combined(model) else embedding_model_name(model, trust=trust_checkpoint)
    if embedding and index is None:
        raise VestisError(
            f"{model}: an embedding model ({embedding}) needs --index INDEX: it serves substitute search over an "
            f"index built from it (`vestis index {model} CATALOG --out INDEX`) and predicts no attributes alone"
        )
    if embedding and runtime is not None:
        raise VestisError(f"{model}: --runtime: an embedding model runs as its file says (a checkpoint on PyTorch)")
    if not model.exists():
        raise VestisError(f"{model}: model file not found")
    catalog = None
    if index is not None:  # before the model is loaded (and exported): a mismatched index fails at once
        from vestis.retrieval.catalog_index import CatalogIndex
        from vestis.service.search import check_index_model

        catalog = CatalogIndex.open(index)
        check_index_model(catalog, model)
    predictor: Any = None
    export: dict[str, Any] | None = None
    if embedding:
        from vestis.service.embedding import EmbeddingAttributes

        assert catalog is not None  # an embedding model without --index was refused above
        predictor = EmbeddingAttributes.from_index(catalog, device)
    else:
        from vestis.service.startup import load_served

        predictor, startup, note = load_served(
            model, runtime, device=device, opset=opset, trust_checkpoint=trust_checkpoint
        )
        if note:
            echo(note)
        if startup is not None:
            echo(startup.summary())
            export = startup.to_dict()
        if catalog is not None:
            catalog.embedder(device)  # image queries embed with it: a missing model file fails here, not per request
    app = create_app(predictor, config, index=catalog, export=export)
    shown = f"[{host}]" if ":" in host else host
    searching = f" · searching {len(catalog):,} items of {index}" if catalog is not None else ""
    echo(
        f"serving {model} ({predictor.backend} on {predictor.device}, {len(predictor.taxonomy)} attributes) "
        f"at http://{shown}:{port}/ · batches of up to {max_batch_size}, waiting up to {max_wait_ms:g} ms · "
        f"{config.decode_threads} decode threads{searching}"
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _serve_outfit(
    model: Path, config: ServiceConfig, *, index: Path | None, device: str | None, host: str, port: int, log_level: str
) -> None:
    """``vestis serve`` of an outfit pipeline (a pipeline file runs on torch, an exported folder on ONNX Runtime)."""
    import uvicorn

    from vestis.inference.pipeline import OutfitPipeline
    from vestis.service import create_app

    if index is not None:
        raise VestisError(f"{model}: an outfit pipeline serves no --index (substitute search serves a single model)")
    pipeline = OutfitPipeline.load(model, device=device)
    app = create_app(pipeline, config)
    shown = f"[{host}]" if ":" in host else host
    spec = pipeline.spec
    echo(
        f"serving the outfit pipeline {model} ({pipeline.runtime}; {len(spec.classes)} object types, "
        f"{len(spec.layout.categories)} categories, {len(spec.layout.attributes)} attribute values) at "
        f"http://{shown}:{port}/ · POST /v1/outfit · batches of up to {config.max_batch_size} images"
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)
