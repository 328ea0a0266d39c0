"""The service's error answers: every error is JSON ``{"error": ..., "detail": ...}``.

A :class:`~vestis.service.decoding.ServiceError` answers its own status; a client that hangs up mid-upload is
counted and logged on one line (499, as in nginx); an invalid request is a 422 naming the fields; anything
unexpected is a 500 with the exception's type only (the traceback goes to the log).
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from vestis.service.decoding import ServiceError
from vestis.service.metrics import ServiceMetrics

__all__ = ["add_error_handlers"]

log = logging.getLogger("vestis.service")


def add_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Install the JSON error answers on ``app``; ``metrics`` counts the disconnects."""

    async def service_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return exc.response()

    async def client_disconnect(request: Request, exc: Exception) -> JSONResponse:
        # nobody reads this answer; the status labels the request in the metrics (499 as in nginx)
        metrics.client_disconnects.inc()
        peer = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.info("%s went away while the body of %s %s was read", peer, request.method, request.url.path)
        return JSONResponse({"error": "client disconnected", "detail": None}, status_code=499)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "detail": jsonable_encoder(errors)}, status_code=422)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse(
            {"error": HTTPStatus(exc.status_code).phrase.lower(), "detail": exc.detail},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse({"error": "internal error", "detail": type(exc).__name__}, status_code=500)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(ClientDisconnect, client_disconnect)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
