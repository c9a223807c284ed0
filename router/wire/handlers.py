"""Render errors as OpenAI error bodies: one set of Litestar exception handlers for the router and the workers.

Litestar's own 404 (no route), 405 and 413 become our errors, so they read like the rest: a path nobody serves
is named, with the endpoints this app does serve (listed from its routes, so the router and a worker each list
their own).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from litestar import Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from router.wire.errors import (
    MethodNotAllowed,
    PayloadTooLarge,
    RelayedClientError,
    RouterError,
    UnknownEndpoint,
)
from router.wire.protocol import ErrorBody, ErrorDetail, encode

log = logging.getLogger(__name__)

_HTTP_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def exception_handlers() -> ExceptionHandlersMap:
    return {RouterError: _router_error, HTTPException: _http_error, Exception: _unexpected_error}


def error_response(status: int, body: ErrorBody, headers: Mapping[str, str] | None = None) -> Response[bytes]:
    return Response(encode(body), status_code=status, media_type="application/json", headers=dict(headers or {}))


def _router_error(_: Request[Any, Any, State], exc: RouterError) -> Response[bytes]:
    if isinstance(exc, RelayedClientError):
        return Response(exc.raw_body, status_code=exc.status_code, media_type="application/json", headers=exc.headers())
    return error_response(exc.status_code, exc.body(), exc.headers())


def _http_error(request: Request[Any, Any, State], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status == 413:  # Litestar's own body limit (`server.max_body_bytes`), translated into ours
        return _router_error(request, PayloadTooLarge("the request body is larger than this server accepts"))
    if status == 404 and "route_handler" not in request.scope:  # routing found no route for the path
        return _router_error(request, UnknownEndpoint(request.method, request.url.path, endpoints(request)))
    if status == 405:
        allowed = [m.strip() for m in (exc.headers or {}).get("allow", "").split(",") if m.strip()]
        return _router_error(request, MethodNotAllowed(request.method, request.url.path, allowed))
    error_type = _HTTP_ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return error_response(status, ErrorBody(ErrorDetail(exc.detail or "error", error_type, None, None)), exc.headers)


def endpoints(request: Request[Any, Any, State]) -> list[str]:
    """`METHOD /path` for every route of the app that served `request` (OPTIONS and HEAD left out), the API's
    `/v1/...` first."""
    found: list[tuple[str, str]] = []
    for route in request.app.routes:
        methods = sorted(getattr(route, "methods", set()) - {"OPTIONS", "HEAD"})
        found.extend((route.path_format, method) for method in methods)
    found.sort(key=lambda entry: (not entry[0].startswith("/v1/"), entry))
    return [f"{method} {path}" for path, method in found]


def _unexpected_error(request: Request[Any, Any, State], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = ErrorBody(ErrorDetail("internal error", "server_error", None, "internal_error"))
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, body)
