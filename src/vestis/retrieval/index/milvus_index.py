"""Milvus, the backend for catalogs that outgrow one machine, through pymilvus's ``MilvusClient``.

``path`` is either a local ``*.db`` path, served in-process by milvus-lite (a real Milvus engine with nothing to
start; its server threads are stopped by :meth:`MilvusIndex.close`), or the URI of a Milvus server or cluster::

    MilvusIndex.create("hnsw", 448, path="INDEX/vectors.db")                         # milvus-lite, embedded
    MilvusIndex.create("ivfpq", 448, path="http://milvus:19530", token="root:Milvus",  # a Milvus cluster
                       collection="shop_items", fields={"category": "str"})
    MilvusIndex.open("http://milvus:19530", token="root:Milvus", collection="shop_items")

One collection holds ``id`` (INT64 primary key), ``vector`` (FLOAT_VECTOR, inner product) and the scalar
``fields`` declared at creation (nullable), so attribute filters run natively: ``search(..., expr='category ==
"Shirts"')``; a ``str_list`` field holds several values per item (a multi-label attribute) and is filtered with
:func:`any_of` (``array_contains_any``). The index kind maps to Milvus's ``FLAT``, ``HNSW`` (``M``,
``ef_construction``; ``ef_search`` at query time) and ``IVF_PQ`` (``nlist``, ``m``, ``nbits``; ``nprobe``);
milvus-lite has no IVF_PQ, so ``ivfpq`` needs a Milvus server. The kind and its parameters are kept in the
collection's properties, so :meth:`open` needs only the path (and the collection name when it is not the default).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError
from vestis.retrieval.index.base import (
    INDEXES,
    VectorIndex,
    check_ids,
    check_k,
    check_kind,
    check_vectors,
    pad_results,
)

__all__ = ["FIELD_TYPES", "MilvusIndex", "any_of"]

FIELD_TYPES = ("str", "int", "float", "bool", "str_list")
_META_KEY = "vestis.index"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_RESERVED = {"id", "vector"}
_INSERT_ROWS = 4096  # rows per insert request: well under gRPC's message limit at a few thousand dimensions
_VARCHAR_MAX = 1024
_LIST_MAX = 256  # values per str_list field and item (a multi-label attribute's values)
_KIND_PARAMS = {"flat": {}, "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 128}}
_IVFPQ_PARAMS = {"nlist", "m", "nbits", "nprobe"}

# milvus-lite runs one in-process server per data folder; several indexes of one folder share it, so it is
# stopped when the last of them closes
_LITE_LOCK = threading.Lock()
_LITE_USERS: dict[str, int] = {}


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as e:
        raise VestisError(f"the Milvus backend needs pymilvus: pip install 'vestis[search]' ({e})") from None
    return pymilvus


def _is_lite(path: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*://", path) and not path.startswith("unix:")


@contextmanager
def _milvus_errors(what: str):
    """Turn a Milvus failure into a one-line ``VestisError``; pymilvus's own error log is silenced meanwhile."""
    pymilvus = _pymilvus()
    log = logging.getLogger("pymilvus")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    except pymilvus.MilvusException as e:
        message = " ".join(str(getattr(e, "message", e)).split())
        raise VestisError(f"{what}: {message}") from None
    finally:
        log.setLevel(level)


@INDEXES.register("milvus")
class MilvusIndex(VectorIndex):
    """One Milvus collection searched by inner product (see the module docstring)."""

    backend: ClassVar[str] = "milvus"

    def __init__(self, client: Any, *, path: str, collection: str, meta: dict[str, Any], lite: bool) -> None:
        self._client = client
        self.path = path
        self.collection = collection
        self.kind = meta["kind"]
        self.dim = int(meta["dim"])
        self.params = dict(meta["params"])
        self.fields = dict(meta["fields"])
        self._lite = lite
        self._closed = False

    # -- connection -----------------------------------------------------------------------------------------
    @staticmethod
    def _connect(path: str | os.PathLike[str], token: str | None) -> tuple[Any, str, bool]:
        pymilvus = _pymilvus()
        path = os.fspath(path)
        lite = _is_lite(path)
        if lite:
            if not path.endswith(".db"):
                raise VestisError(f"{path}: a milvus-lite index path must end in .db (or give an http:// URI)")
            path = os.path.abspath(path)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with _LITE_LOCK:
                _LITE_USERS[path] = _LITE_USERS.get(path, 0) + 1
        try:
            with _milvus_errors(f"{path}: cannot connect to Milvus"):
                client = pymilvus.MilvusClient(uri=path, **({"token": token} if token else {}))
        except BaseException:
            if lite:
                _release_lite(path)
            raise
        return client, path, lite

    @classmethod
    def create(
        cls,
        kind: str,
        dim: int,
        *,
        path: str | os.PathLike[str],
        collection: str = "vestis",
        fields: Mapping[str, str] | None = None,
        token: str | None = None,
        **params: Any,
    ) -> Self:
        """A new, empty collection (an existing one of that name is an error: remove it on purpose first).

        Args:
            kind: ``flat``, ``hnsw`` or ``ivfpq`` (Milvus server only).
            dim: vector dimension.
            path: a milvus-lite ``*.db`` path or a Milvus URI (``http://host:19530``).
            collection: the collection name.
            fields: scalar attributes stored with each vector for filter expressions, ``{name: type}`` with
                ``type`` one of ``FIELD_TYPES``.
            token: Milvus credentials (``user:password`` or an API key) for a server.
            **params: HNSW ``M``, ``ef_construction``, ``ef_search``; IVF-PQ ``nlist`` (1024), ``m``, ``nbits`` (8),
                ``nprobe`` (64).
        """
        check_kind(kind)
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise VestisError(f"dim: expected a positive integer, got {dim!r}")
        dim = int(dim)
        if not _NAME.match(collection):
            raise VestisError(f"collection {collection!r}: expected letters, digits and _ (not first a digit)")
        fields = dict(fields or {})
        for name, type_ in fields.items():
            if not isinstance(name, str) or not _NAME.match(name) or name in _RESERVED:
                raise VestisError(
                    f"fields: {name!r} is not a usable Milvus field name (letters, digits, _; not id / vector)"
                )
            if type_ not in FIELD_TYPES:
                raise VestisError(f"fields[{name!r}]: type {type_!r}, expected one of {', '.join(FIELD_TYPES)}")
        defaults = (
            _KIND_PARAMS[kind]
            if kind != "ivfpq"
            else {
                "nlist": 1024,
                "m": max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0),
                "nbits": 8,
                "nprobe": 64,
            }
        )
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise VestisError(f"{kind} index: unknown parameter(s) {unknown}; expected {sorted(defaults)}")
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise VestisError(f"{kind} index: parameter {name} expected a positive integer, got {value!r}")
        params = {**defaults, **{k: int(v) for k, v in params.items()}}
        if kind == "ivfpq" and dim % params["m"]:
            raise VestisError(f"ivfpq index: m={params['m']} must divide the dimension {dim}")
        if kind == "ivfpq" and _is_lite(os.fspath(path)):
            raise VestisError(
                f"{os.fspath(path)}: milvus-lite has no IVF_PQ index; use --index-type flat or hnsw locally, "
                "or a Milvus server (path http://host:19530) for ivfpq"
            )
        client, path, lite = cls._connect(path, token)
        meta = {"format": 1, "kind": kind, "dim": dim, "params": params, "fields": fields}
        try:
            cls._create_collection(client, collection, meta)
        except BaseException:
            _close_client(client, path, lite)
            raise
        return cls(client, path=path, collection=collection, meta=meta, lite=lite)

    @staticmethod
    def _create_collection(client: Any, collection: str, meta: dict[str, Any]) -> None:
        pymilvus = _pymilvus()
        dt = pymilvus.DataType
        with _milvus_errors(f"collection {collection!r}"):
            if client.has_collection(collection):
                raise VestisError(f"collection {collection!r} already exists; open it, or drop it first")
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", dt.INT64, is_primary=True)
            schema.add_field("vector", dt.FLOAT_VECTOR, dim=meta["dim"])
            types = {"str": dt.VARCHAR, "int": dt.INT64, "float": dt.DOUBLE, "bool": dt.BOOL, "str_list": dt.ARRAY}
            for name, type_ in meta["fields"].items():
                extra: dict[str, Any] = {"max_length": _VARCHAR_MAX} if type_ == "str" else {}
                if type_ == "str_list":
                    extra = {"element_type": dt.VARCHAR, "max_capacity": _LIST_MAX, "max_length": _VARCHAR_MAX}
                schema.add_field(name, types[type_], nullable=True, **extra)
            p = meta["params"]
            index_type, build = {
                "flat": ("FLAT", {}),
                "hnsw": ("HNSW", {"M": p.get("M"), "efConstruction": p.get("ef_construction")}),
                "ivfpq": ("IVF_PQ", {"nlist": p.get("nlist"), "m": p.get("m"), "nbits": p.get("nbits")}),
            }[meta["kind"]]
            index_params = client.prepare_index_params()
            index_params.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=build)
            client.create_collection(
                collection,
                schema=schema,
                index_params=index_params,
                consistency_level="Strong",  # a search sees every insert and delete made before it
                properties={_META_KEY: json.dumps(meta)},
            )

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, collection: str = "vestis", token: str | None = None, **options: Any
    ) -> Self:
        """The collection ``collection`` at ``path`` (a milvus-lite ``*.db`` or a Milvus URI)."""
        if options:
            raise VestisError(f"milvus index: unknown option(s) {sorted(options)}")
        shown = os.fspath(path)
        if _is_lite(shown) and not Path(shown).exists():
            raise VestisError(f"{shown}: no milvus-lite index there")
        client, path, lite = cls._connect(path, token)
        try:
            with _milvus_errors(f"{shown}: collection {collection!r}"):
                if not client.has_collection(collection):
                    names = client.list_collections()
                    raise VestisError(f"{shown}: no collection {collection!r}; it has {names or 'none'}")
                props = client.describe_collection(collection).get("properties") or {}
            try:
                meta = json.loads(props[_META_KEY])
                check_kind(meta["kind"])
            except (KeyError, ValueError, TypeError) as e:
                raise VestisError(f"{shown}: collection {collection!r} was not made by vestis ({e})") from None
            client.load_collection(collection)
        except BaseException:
            _close_client(client, path, lite)
            raise
        return cls(client, path=path, collection=collection, meta=meta, lite=lite)

    @classmethod
    def drop(cls, path: str | os.PathLike[str], *, collection: str = "vestis", token: str | None = None) -> bool:
        """Delete the collection ``collection`` at ``path`` when it exists; returns whether it did.

        Raises:
            VestisError: the collection exists but was not made by vestis (it is left alone).
        """
        shown = os.fspath(path)
        if _is_lite(shown) and not Path(shown).exists():
            return False
        client, path, lite = cls._connect(path, token)
        try:
            with _milvus_errors(f"{shown}: collection {collection!r}"):
                if not client.has_collection(collection):
                    return False
                props = client.describe_collection(collection).get("properties") or {}
                if _META_KEY not in props:
                    raise VestisError(f"{shown}: collection {collection!r} was not made by vestis; not replacing it")
                client.drop_collection(collection)
                return True
        finally:
            _close_client(client, path, lite)

    def close(self) -> None:
        """Close the connection; for milvus-lite also stop its server once no index of the folder is open."""
        if not self._closed:
            self._closed = True
            _close_client(self._client, self.path, self._lite)

    def _live(self) -> Any:
        if self._closed:
            raise VestisError(f"{self.path}: the Milvus index is closed")
        return self._client

    # -- content --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        with _milvus_errors(f"collection {self.collection!r}"):
            rows = self._live().query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _present(self, ids: np.ndarray) -> np.ndarray:
        found: list[int] = []
        client = self._live()
        with _milvus_errors(f"collection {self.collection!r}"):
            for start in range(0, ids.size, 16_384):
                chunk = ids[start : start + 16_384].tolist()
                rows = client.query(self.collection, filter=f"id in {chunk}", output_fields=["id"])
                found.extend(int(r["id"]) for r in rows)
        return np.array(sorted(found), dtype=np.int64)

    def add(self, ids: ArrayLike, vectors: ArrayLike, *, fields: Mapping[str, Sequence[Any]] | None = None) -> None:
        """Insert ``vectors`` under ``ids`` with optional scalar ``fields`` ``{name: (N,) values}`` (None: null)."""
        ids = check_ids(ids)
        x = check_vectors(vectors, self.dim, rows=ids.size)
        fields = dict(fields or {})
        unknown = sorted(set(fields) - set(self.fields))
        if unknown:
            raise VestisError(f"fields: unknown {unknown}; the collection has {sorted(self.fields) or 'none'}")
        columns = {}
        for name, values in fields.items():
            values = list(values)
            if len(values) != ids.size:
                raise VestisError(f"fields[{name!r}]: expected {ids.size} values (one per id), got {len(values)}")
            columns[name] = [_scalar(v, self.fields[name], name) for v in values]
        if ids.size == 0:
            return
        present = self._present(ids)
        if present.size:
            raise VestisError(f"ids: already in the index: {present[:5].tolist()}; remove them first")
        client = self._live()
        with _milvus_errors(f"collection {self.collection!r}: insert"):
            for start in range(0, ids.size, _INSERT_ROWS):
                stop = min(start + _INSERT_ROWS, ids.size)
                rows = [
                    {"id": int(ids[i]), "vector": x[i], **{n: c[i] for n, c in columns.items()}}
                    for i in range(start, stop)
                ]
                client.insert(self.collection, rows)

    def remove(self, ids: ArrayLike) -> int:
        """Delete ``ids`` (unknown ones are ignored); returns how many were present."""
        ids = check_ids(np.unique(np.asarray(ids)))
        present = self._present(ids)
        if present.size:
            with _milvus_errors(f"collection {self.collection!r}: delete"):
                self._live().delete(self.collection, ids=present.tolist())
        return int(present.size)

    # -- search ---------------------------------------------------------------------------------------------
    def search(
        self,
        queries: ArrayLike,
        k: int,
        *,
        allow: ArrayLike | None = None,
        expr: str | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best ids per query, pre-filtered by ``allow`` ids and / or a Milvus ``expr``.

        Args:
            queries: ``(Q, D)``.
            k: hits per query (Milvus allows at most 16384).
            allow: ids a hit must be one of (``id in [...]``).
            expr: a Milvus boolean filter on the scalar fields, e.g. ``category in ["Shirts", "Tops"]``.
            nprobe: IVF lists scanned (IVF-PQ).
            ef_search: HNSW candidate list size (at least ``k``).
        """
        q = check_vectors(queries, self.dim, "queries")
        k = check_k(k)
        if k > 16_384:
            raise VestisError(f"k: Milvus returns at most 16384 hits per query, got {k}")
        empty = (np.zeros((q.shape[0], 0), np.int64), np.zeros((q.shape[0], 0), np.float32))
        filters = []
        if allow is not None:
            allowed = np.unique(np.asarray(allow))
            if allowed.size and not np.issubdtype(allowed.dtype, np.integer):
                raise VestisError(f"allow: expected integer ids, got dtype {allowed.dtype}")
            if allowed.size == 0:
                return pad_results(*empty, k)
            filters.append(f"id in {allowed.astype(np.int64).tolist()}")
        if expr is not None:
            if not isinstance(expr, str) or not expr.strip():
                raise VestisError(f"expr: expected a Milvus filter expression, got {expr!r}")
            filters.append(f"({expr})")
        search_params: dict[str, Any] = {"metric_type": "IP", "params": {}}
        if self.kind == "hnsw":
            ef = self.params["ef_search"] if ef_search is None else ef_search
            search_params["params"]["ef"] = max(int(ef), k)
        elif self.kind == "ivfpq":
            search_params["params"]["nprobe"] = int(self.params["nprobe"] if nprobe is None else nprobe)
        if q.shape[0] == 0:
            return pad_results(*empty, k)
        with _milvus_errors(f"collection {self.collection!r}: search"):
            result = self._live().search(
                self.collection,
                data=list(q),
                limit=k,
                filter=" and ".join(filters),
                search_params=search_params,
                output_fields=["id"],
            )
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        for i, row in enumerate(result):
            for j, hit in enumerate(row[:k]):
                ids[i, j] = int(hit["id"])
                scores[i, j] = float(hit["distance"])
        return pad_results(ids, scores, k)

    # -- persistence ----------------------------------------------------------------------------------------
    def save(self) -> None:
        """Flush the inserts and deletes to Milvus's storage (which logs them itself: no half-written state)."""
        with _milvus_errors(f"collection {self.collection!r}: flush"):
            self._live().flush(self.collection)

    def info(self) -> dict[str, Any]:
        """Backend, kind, dimension, count, parameters, fields; ``disk_bytes`` of a milvus-lite folder."""
        disk = None
        if self._lite:
            disk = sum(f.stat().st_size for f in Path(self.path).rglob("*") if f.is_file())
        return {
            "backend": self.backend,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self),
            "params": dict(self.params),
            "fields": dict(self.fields),
            "uri": self.path,
            "collection": self.collection,
            "memory_bytes": None,  # held by the Milvus server, not measurable from the client
            "disk_bytes": disk,
        }


def any_of(field: str, values: Sequence[str]) -> str:
    """A filter expression: the ``str_list`` ``field`` holds at least one of ``values``."""
    if not _NAME.match(field):
        raise VestisError(f"field {field!r}: not a Milvus field name")
    literal = json.dumps([str(v) for v in values], ensure_ascii=False)  # quotes and backslashes escaped
    return f"array_contains_any({field}, {literal})"


def _scalar(value: Any, type_: str, name: str) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        if type_ == "str_list":
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ValueError("expected a list of strings")
            texts = [_scalar(v, "str", name) for v in value]
            if any(t is None for t in texts) or len(texts) > _LIST_MAX:
                raise ValueError(f"expected at most {_LIST_MAX} strings, none of them null")
            return texts
        if type_ == "str":
            text = str(value)
            if len(text.encode("utf-8")) > _VARCHAR_MAX:
                raise ValueError(f"longer than {_VARCHAR_MAX} bytes")
            return text
        if type_ == "int":
            if isinstance(value, bool) or int(value) != value:
                raise ValueError("not an integer")
            return int(value)
        if type_ == "float":
            return float(value)
        if not isinstance(value, bool | np.bool_):
            raise ValueError("not a boolean")
        return bool(value)
    except (TypeError, ValueError) as e:
        raise VestisError(f"fields[{name!r}]: value {value!r} is not a {type_} ({e})") from None


def _release_lite(path: str) -> None:
    with _LITE_LOCK:
        users = _LITE_USERS.get(path, 0) - 1
        if users > 0:
            _LITE_USERS[path] = users
            return
        _LITE_USERS.pop(path, None)
    try:
        from milvus_lite import server_manager_instance
    except ImportError:  # pymilvus without milvus-lite never started a server here
        return
    server_manager_instance.release_server(path)


def _close_client(client: Any, path: str, lite: bool) -> None:
    try:
        client.close()
    finally:
        if lite:
            _release_lite(path)
