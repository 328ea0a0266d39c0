"""The JSON encoder of the hot endpoints: orjson when it is installed, FastAPI's own otherwise.

``/v1/attributes`` builds its body as plain dicts (already validated by :class:`~vestis.service.schemas.ImageResult`);
with orjson the handler returns it serialised in one native call, skipping FastAPI's second validation against the
response model. Both encoders give the same JSON (``tests/service/test_responses.py``). orjson is in the ``serve``
extra; FastAPI's ``ORJSONResponse`` is deprecated in the FastAPI versions that serialise through Pydantic, so the
few lines it holds are here.
"""

from __future__ import annotations

import importlib
from typing import Any

from starlette.responses import JSONResponse

__all__ = ["OrjsonResponse", "fast_json_response"]

try:
    orjson: Any = importlib.import_module("orjson")
except ModuleNotFoundError:
    orjson = None


class OrjsonResponse(JSONResponse):
    """A JSON response serialised by orjson (numpy arrays and scalars included)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def fast_json_response() -> type[JSONResponse] | None:
    """:class:`OrjsonResponse` when orjson is importable, else ``None`` (FastAPI serialises the response model)."""
    return OrjsonResponse if orjson is not None else None
