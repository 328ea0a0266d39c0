"""Substitute search over HTTP: ``POST /v1/search``, ``GET /v1/items/{id}``, its thumbnail, ``GET /v1/index``.

Mounted by :func:`vestis.service.app.create_app` when it is given a
:class:`~vestis.retrieval.catalog_index.CatalogIndex` (``vestis serve MODEL --index INDEX``). The stages are the
attribute endpoints' ones; the index is the model here and never sees HTTP::

    read      (JSON or multipart -> the query (an id or one image file) and SearchOptions; 4xx on a bad body)
    headers   (the image's pixel caps, before decoding)
    decode    (one image -> RGB, holding its share of the decode budget)
    search    (CatalogIndex.search, in the one search thread; 503 + Retry-After when too many wait)
    encode    (Hit -> SearchHit with the thumbnail URL)

An id that the index does not hold is a 404 before the index is asked (``CatalogIndex.search`` reads a string
that is not an id as a path on this machine; a client must never reach that). Thumbnails are read from the
catalog root recorded in the index, from the path resolved with its symlinks, and refused when that lies outside
the root; the file is capped at the upload size, its pixels at the image cap, and its decoding holds the decode
budget like an upload.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from vestis.errors import VestisError
from vestis.service.batching import Overloaded
from vestis.service.decoding import RawImage, ServiceError, _b64decode, decode_image, json_within_depth
from vestis.service.schemas import (
    ERROR_RESPONSES,
    SEARCH_REQUEST_BODY,
    ErrorResponse,
    IndexAttribute,
    IndexInfo,
    ItemResponse,
    SearchHit,
    SearchQuery,
    SearchRequest,
    SearchResponse,
)

if TYPE_CHECKING:
    from vestis.retrieval.catalog_index import CatalogIndex, Hit

__all__ = ["THUMBNAIL_SIDE", "Searcher", "add_search_routes", "check_index_model"]

THUMBNAIL_SIDE = 256  # the longer side of a thumbnail, in pixels
_JPEG_QUALITY = 85
_MAX_PENDING = 32  # searches waiting for the search thread before new ones are shed
_MAX_FIELDS = 64  # form fields of a multipart search (set / where / only repeat)
T = TypeVar("T")

_NOT_FOUND = {404: {"model": ErrorResponse, "description": "No item with this id in the index."}}


def check_index_model(index: CatalogIndex, model: str | os.PathLike[str]) -> None:
    """Refuse an index built by another model than the one served (the sha256 recorded in ``index.json``).

    Raises:
        VestisError: the digests differ, or the index records none.
    """
    from vestis.retrieval.catalog_store import file_sha256

    recorded = (index.meta.get("model") or {}).get("sha256")
    built_with = (index.meta.get("model") or {}).get("path")
    if not recorded:
        raise VestisError(f"{index.path / 'index.json'}: records no model sha256; rebuild it with `vestis index`")
    if file_sha256(model) != recorded:
        raise VestisError(
            f"{index.path}: built with {built_with} (sha256 {recorded[:12]}...), not with {model} "
            f"(sha256 {file_sha256(model)[:12]}...); serve the index's model, or rebuild the index with this one"
        )


class Searcher:
    """The index and the one thread its searches run in (queries embed images with the index's model)."""

    def __init__(self, index: CatalogIndex) -> None:
        self.index = index
        self.executor: ThreadPoolExecutor | None = None
        self.pending = 0

    def start(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vestis-search")

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = None

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the search thread, or :class:`Overloaded` when too many already wait."""
        if self.executor is None:
            raise ServiceError(503, "not ready", "the index is not open yet; see /readyz")
        if self.pending >= _MAX_PENDING:
            raise Overloaded(f"{self.pending} searches are waiting", retry_after=1)
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))
        finally:
            self.pending -= 1


def _thumbnail_url(item_id: str) -> str:
    return f"/v1/items/{quote(item_id, safe='')}/thumbnail"


def _split_pairs(values: list[str], field: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        attr, sep, value = v.partition("=")
        if not sep or not attr.strip() or not value.strip():
            raise ServiceError(422, "invalid request", f"{field}: expected attribute=value, got {v!r}")
        out.append((attr.strip(), value.strip()))
    return out


async def _read_multipart(request: Request) -> tuple[dict[str, Any], RawImage | None]:
    try:
        form = await request.form(max_files=1, max_fields=_MAX_FIELDS)
    except HTTPException as e:  # starlette reports every multipart problem as a 400
        if "Too many files" in str(e.detail):
            raise ServiceError(413, "too many images", "a search takes one `file`") from None
        raise ServiceError(422, "invalid multipart body", e.detail) from None
    try:
        body: dict[str, Any] = {}
        raw = None
        files = form.getlist("file")
        if files:
            part = files[0]
            if not isinstance(part, UploadFile):
                raise ServiceError(422, "invalid request", "file: expected a file upload (a part with a filename)")
            raw = RawImage(await part.read(), "file", part.filename or None)
        texts = {key: [v for v in form.getlist(key) if isinstance(v, str)] for key in form}
        unknown = sorted(set(texts) - {"file", "id", "set", "only", "where", "k", "additive"})
        if unknown:
            raise ServiceError(
                422, "invalid request", f"unknown fields {unknown}; expected file or id, set, only, where, k, additive"
            )
        if texts.get("id"):
            body["id"] = texts["id"][-1]
        if texts.get("set"):
            body["set"] = dict(_split_pairs(texts["set"], "set"))
        if texts.get("where"):
            where: dict[str, list[str]] = {}
            for attr, value in _split_pairs(texts["where"], "where"):
                where.setdefault(attr, []).append(value)
            body["where"] = where
        if "only" in texts:
            body["only"] = [a.strip() for v in texts["only"] for a in v.split(",") if a.strip()]
        for key in ("k", "additive"):
            if texts.get(key):
                body[key] = texts[key][-1]
        return body, raw
    finally:
        await form.close()


async def _read_search(request: Request, max_json_depth: int) -> tuple[SearchRequest, RawImage | None]:
    """The request's options and its query image (``None``: the query is ``id``)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    raw = None
    if media_type == "multipart/form-data":
        body, raw = await _read_multipart(request)
    elif media_type == "application/json" or media_type.endswith("+json"):
        data = await request.body()
        if not json_within_depth(data, max_json_depth):
            raise ServiceError(422, "invalid JSON", f"nested more than {max_json_depth} levels deep")
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise ServiceError(422, "invalid JSON", str(e)) from None
    else:
        raise ServiceError(
            415,
            "unsupported media type",
            f'got {media_type or "no content type"}; send application/json {{"id": ...}} or multipart with a `file`',
        )
    try:
        req = SearchRequest.model_validate(body)
    except ValidationError as e:
        raise ServiceError(
            422, "invalid request", e.errors(include_url=False, include_context=False, include_input=False)
        ) from None
    if req.image is not None:
        if raw is not None:
            raise ServiceError(422, "invalid request", "send the image once: a `file` part or `image`, not both")
        raw = RawImage(_b64decode(req.image, "image"), "image")
    if (raw is None) == (req.id is None):
        raise ServiceError(422, "invalid request", "expected exactly one query: a catalog `id` or an image")
    return req, raw


def _hit(h: Hit) -> SearchHit:
    return SearchHit(
        id=h.id,
        score=h.score,
        distance=h.distance,
        per_attribute=h.per_attribute,
        attributes=h.attributes,
        thumbnail=_thumbnail_url(h.id),
    )


def _read_catalog_file(path: Path, max_bytes: int, where: str) -> bytes:
    """The bytes of a catalog image, opened without following a last-moment symlink, at most ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        reason = f"{where}: the catalog image cannot be opened ({e.strerror})"
        raise ServiceError(404, "image not found", reason) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ServiceError(404, "image not found", f"{where}: the catalog image is not a file")
        if st.st_size > max_bytes:
            raise ServiceError(413, "image too large", f"{where}: {st.st_size:,} bytes; at most {max_bytes:,}")
        return f.read(max_bytes + 1)


def _thumbnail_jpeg(raw: RawImage, max_pixels: int, side: int) -> bytes:
    decoded = decode_image(raw, max_pixels, min_side=side)  # a large JPEG is decoded at a reduced DCT scale
    img = decoded.image
    try:
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=_JPEG_QUALITY)
        return buf.getvalue()
    finally:
        img.close()


def add_search_routes(app: FastAPI, service: Any, index: CatalogIndex) -> Searcher:
    """Add the search endpoints for ``index`` to ``app``; returns the :class:`Searcher` to start with the app.

    Args:
        app: the application of :func:`~vestis.service.app.create_app`.
        service: its running state (limits, decode budget, load shedding, the predictor).
        index: the opened catalog index.

    Raises:
        VestisError: the index's attributes are not the served model's.
    """
    served = list(service.predictor.taxonomy.names)
    if list(index.taxonomy.names) != served:
        raise VestisError(
            f"{index.path}: its attributes {list(index.taxonomy.names)} are not the served model's {served}"
        )
    searcher = Searcher(index)
    app.state.searcher = searcher
    limits = service.limits

    def known(item_id: str) -> None:
        try:
            index.row(item_id)
        except VestisError as e:
            raise ServiceError(404, "unknown id", str(e)) from None

    async def search_with(query: Any, req: SearchRequest) -> list[Hit]:
        if isinstance(query, Image.Image):
            try:  # loaded once (the model file and its sha256 are checked then); a failure is the server's
                await searcher.run(index.embedder)
            except Overloaded as e:
                raise service.shed("search", e) from None
            except VestisError as e:
                raise ServiceError(503, "index model unavailable", str(e)) from None
        try:
            return await searcher.run(
                index.search, query, set=req.set, only=req.only, where=req.where, k=req.k, additive=req.additive
            )
        except Overloaded as e:
            raise service.shed("search", e) from None
        except VestisError as e:  # an unknown attribute or value, named with the valid ones
            raise ServiceError(422, "invalid search", str(e)) from None

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        responses={**_NOT_FOUND, **ERROR_RESPONSES},
        openapi_extra=SEARCH_REQUEST_BODY,
        summary="Substitutes of an image or a catalog item, with manipulations, attribute selection and filters",
        tags=["search"],
    )
    async def search(request: Request) -> SearchResponse:
        req, raw = await _read_search(request, limits.max_json_depth)
        if raw is None:
            assert req.id is not None
            known(req.id)  # before the index reads the string (see the module docstring)
            hits = await search_with(req.id, req)
            query = SearchQuery(id=req.id)
        else:
            [head] = await service.headers([raw])
            try:
                async with service.memory(head.decoded_bytes):
                    decoded = await run_in_threadpool(decode_image, raw, limits.max_pixels, service.input_size)
                    try:
                        hits = await search_with(decoded.image, req)
                    finally:
                        decoded.image.close()
            finally:
                await service.settle()
            query = SearchQuery(filename=raw.filename, width=head.width, height=head.height)
        only = list(index.taxonomy.names) if req.only is None else list(dict.fromkeys(req.only))
        return SearchResponse(
            query=query,
            set=req.set,
            only=only,
            where=req.where,
            k=req.k,
            hits=[_hit(h) for h in hits],
            model=getattr(service, "fingerprint", None),
        )

    @app.get(
        "/v1/items/{item_id}",
        response_model=ItemResponse,
        responses=_NOT_FOUND,
        summary="A catalog item: labels, predictions and the thumbnail URL",
        tags=["search"],
    )
    async def item(item_id: str = PathParam(..., description="The catalog id.")) -> ItemResponse:
        known(item_id)
        got = index.item(item_id)
        image = got["image"] if not Path(got["image"]).is_absolute() else None  # no server paths in answers
        return ItemResponse(**{**got, "image": image}, thumbnail=_thumbnail_url(got["id"]))

    @app.get(
        "/v1/items/{item_id}/thumbnail",
        response_class=Response,
        responses={
            200: {
                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                "description": f"The item's image as a JPEG, its longer side at most {THUMBNAIL_SIDE} px.",
            },
            403: {"model": ErrorResponse, "description": "The item's image lies outside the catalog root."},
            404: {"model": ErrorResponse, "description": "No such id, or its image file is gone."},
            413: ERROR_RESPONSES[413],
            415: ERROR_RESPONSES[415],
            422: {"model": ErrorResponse, "description": "The catalog image is corrupt."},
            503: ERROR_RESPONSES[503],
        },
        summary="The item's thumbnail, read from the catalog",
        tags=["search"],
    )
    async def thumbnail(item_id: str = PathParam(..., description="The catalog id.")) -> Response:
        known(item_id)
        where = f"item {item_id!r}"
        if index.catalog_root is None:
            raise ServiceError(403, "outside the catalog", f"{where}: the index records no catalog root")
        try:
            path = index.image_path(item_id)  # resolved, symlinks included, and checked against the root
        except VestisError as e:
            raise ServiceError(403, "outside the catalog", str(e)) from None
        data = await run_in_threadpool(_read_catalog_file, path, limits.max_upload_bytes, where)
        raw = RawImage(data, where)
        [head] = await service.headers([raw])
        try:
            async with service.memory(head.decoded_bytes):
                jpeg = await run_in_threadpool(_thumbnail_jpeg, raw, limits.max_pixels, THUMBNAIL_SIDE)
        finally:
            await service.settle()
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})

    @app.get("/v1/index", response_model=IndexInfo, summary="The catalog index searched", tags=["search"])
    async def index_info() -> IndexInfo:
        model = index.meta.get("model") or {}
        backend = index.meta.get("backend") or {}
        attrs = [
            IndexAttribute(
                name=a.name,
                kind=a.kind,
                values=list(a.values),
                prototypes=[a.values[int(c)] for c in index.prototypes.values.get(a.name, ())],
            )
            for a in index.taxonomy
        ]
        return IndexInfo(
            count=len(index),
            model=str(model.get("model", "")),
            backend=str(backend.get("name", "")),
            kind=str(backend.get("kind", "")),
            attributes=attrs,
        )

    return searcher
