"""The HTTP service and its web page: ``create_app(predictor) -> FastAPI`` (``vestis serve`` runs it).

Needs the ``serve`` extra (FastAPI, python-multipart, prometheus-client; uvicorn to run it). The names below
are imported on first use, so :class:`ServiceConfig` (``vestis.service.config``) is available without them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from vestis.errors import VestisError

if TYPE_CHECKING:
    from vestis.service.app import AttributePredictor, create_app, render_heatmap
    from vestis.service.config import ServiceConfig

__all__ = ["AttributePredictor", "ServiceConfig", "create_app", "render_heatmap"]
_REQUIRED = ("fastapi", "multipart", "prometheus_client")


def __getattr__(name: str) -> Any:
    if name == "ServiceConfig":
        from vestis.service.config import ServiceConfig

        return ServiceConfig
    if name in __all__:
        missing = [m for m in _REQUIRED if importlib.util.find_spec(m) is None]
        if missing:
            raise VestisError(f"the service needs {', '.join(missing)}: pip install 'vestis[serve]'")
        return getattr(importlib.import_module("vestis.service.app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
