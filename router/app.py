"""The router's Litestar app: the factory, its lifespan, and the error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

import httpx
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from router.backends import RelayedClientError, TierBackend, create_client
from router.classify.base import ComplexityClassifier, build_classifier
from router.config import Config
from router.endpoints import chat_completions, health, list_models, ready, route
from router.errors import RouterError
from router.protocol import ErrorBody, ErrorDetail, encode
from router.service import RoutingService
from router.state import StateStore, create_store

log = logging.getLogger(__name__)

_HTTP_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def create_app(
    config: Config,
    *,
    http_client: httpx.AsyncClient | None = None,
    store: StateStore | None = None,
    classifier: ComplexityClassifier | None = None,
    environ: Mapping[str, str] | None = None,
) -> Litestar:
    """Build the router. Injected resources are used as given and left open; the rest are owned here."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        max_connections = max(t.max_connections for t in config.tiers.values())
        client = http_client or create_client(max_connections)
        state_store = store or create_store(config.redis.url, config.redis.prefix)
        scorer = classifier or build_classifier(config)
        flusher: asyncio.Task[None] | None = None
        try:
            await scorer.start()
            backends = {name: TierBackend(name, tier, client, environ) for name, tier in config.tiers.items()}
            service = RoutingService(config, scorer, backends, state_store)
            app.state.service = service
            flusher = asyncio.create_task(service.flush_forever(), name="flush-counts")
            log.info("router ready: classifier=%s state=%s tiers=%s", scorer.name, state_store.backend, list(backends))
            yield
        finally:
            if flusher is not None:
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
                await app.state.service.flush_counts()
            if classifier is None:
                await scorer.close()
            if store is None:
                await state_store.close()
            if http_client is None:
                await client.aclose()

    return Litestar(
        route_handlers=[chat_completions, route, list_models, health, ready],
        lifespan=[lifespan],
        dependencies={"service": Provide(_service, sync_to_thread=False)},
        exception_handlers={
            RouterError: _router_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        request_max_body_size=config.server.max_body_bytes,
        openapi_config=None,
        logging_config=None,  # the process (the CLI) owns logging; see router.cli
        debug=False,
    )


def _service(state: State) -> RoutingService:
    service: RoutingService = state.service
    return service


def _error_response(status: int, body: ErrorBody, headers: Mapping[str, str] | None = None) -> Response[bytes]:
    return Response(encode(body), status_code=status, media_type="application/json", headers=dict(headers or {}))


def _router_error(_: Request[object, object, State], exc: RouterError) -> Response[bytes]:
    if isinstance(exc, RelayedClientError):
        return Response(exc.raw_body, status_code=exc.status_code, media_type="application/json", headers=exc.headers())
    return _error_response(exc.status_code, exc.body(), exc.headers())


def _http_error(_: Request[object, object, State], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    error_type = _HTTP_ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    code = "request_too_large" if status == 413 else None
    message = exc.detail or "error"
    if status == 413:
        message = "the request body is larger than this router accepts (server.max_body_bytes)"
    return _error_response(status, ErrorBody(ErrorDetail(message, error_type, None, code)), exc.headers)


def _unexpected_error(request: Request[object, object, State], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = ErrorBody(ErrorDetail("internal error in the router", "server_error", None, "internal_error"))
    return _error_response(HTTP_500_INTERNAL_SERVER_ERROR, body)
