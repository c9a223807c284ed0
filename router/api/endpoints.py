"""The API endpoints: each decodes, calls the pipeline once, and encodes; the ops endpoints read its status."""

from __future__ import annotations

from importlib.metadata import version
from importlib.resources import files
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Stream

from router.api.framing import refuse_stream_over_http10
from router.api.openapi import openapi_document
from router.api.ops_access import OpsAccess
from router.dispatch.outcome import Answer, Outcome, StreamAnswer
from router.pipeline import RoutingService
from router.wire.errors import UnknownModel
from router.wire.protocol import ModelCard, ModelList, encode
from router.wire.sse import relay

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
STATUS_PAGE = (files("router") / "data" / "status.html").read_bytes()
OPENAPI = encode(openapi_document(version("tiered-router")))
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@post("/v1/chat/completions", status_code=200)
async def chat_completions(
    request: Request[Any, Any, State], service: NamedDependency[RoutingService]
) -> Response[bytes] | Stream:
    body = await request.body()
    refuse_stream_over_http10(request.scope, body)
    return reply(await service.chat(body, request.headers))


def reply(answer: Answer | StreamAnswer) -> Response[bytes] | Stream:
    """An answer as the response: JSON, or an SSE stream; the `x-router-*` headers from its Outcome."""
    if isinstance(answer, Answer):
        return Response(answer.body, media_type=JSON, headers=answer.outcome.headers())
    headers = {**answer.outcome.headers(), **SSE_HEADERS}
    return Stream(relay(answer.chunks), media_type="text/event-stream", headers=headers)


@post("/v1/route", status_code=200)
async def route(request: Request[Any, Any, State], service: NamedDependency[RoutingService]) -> Response[bytes]:
    caller, _, decision = await service.route(await request.body(), request.headers)
    await service.admit_cost(caller, 0)  # a decision costs the key one request of its per-minute limit
    return Response(encode(decision), media_type=JSON, headers=Outcome(decision).headers())


@get("/v1/models")
async def list_models(request: Request[Any, Any, State], service: NamedDependency[RoutingService]) -> Response[bytes]:
    await service.authenticate(request.headers.get("authorization"))
    cards = [ModelCard(id=name) for name in service.rules.model_names()]
    return Response(encode(ModelList(cards)), media_type=JSON)


@get("/v1/models/{model:path}")
async def retrieve_model(
    request: Request[Any, Any, State], service: NamedDependency[RoutingService], model: str
) -> Response[bytes]:
    await service.authenticate(request.headers.get("authorization"))
    name = model.lstrip("/")  # a `path` parameter keeps its leading slash; model names may hold slashes
    if name not in service.rules.model_names():
        raise UnknownModel(f"The model '{name}' does not exist; GET /v1/models lists the models", param="model")
    return Response(encode(ModelCard(id=name)), media_type=JSON)


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready")
async def ready(
    request: Request[Any, Any, State], service: NamedDependency[RoutingService], ops: NamedDependency[OpsAccess]
) -> Response[bytes]:
    """Ready or not for anyone (probes, load balancers); the detail for the operator (router.api.ops_access)."""
    if ops.allowed(request.headers.get("authorization")):
        report = await service.status.readiness()
    else:
        report = await service.status.summary()
    return Response(encode(report), media_type=JSON, status_code=200 if report["ready"] else 503)


@get("/metrics")
async def metrics(
    request: Request[Any, Any, State], service: NamedDependency[RoutingService], ops: NamedDependency[OpsAccess]
) -> Response[bytes]:
    ops.require(request.headers.get("authorization"))
    return Response(service.observer.render(), media_type=PROMETHEUS)


@get("/status")
async def status_page() -> Response[bytes]:
    """The page itself holds no data; it asks `/status.json` (with the admin key it is given, if one is needed)."""
    return Response(STATUS_PAGE, media_type="text/html; charset=utf-8")


@get("/status.json")
async def status_data(
    request: Request[Any, Any, State], service: NamedDependency[RoutingService], ops: NamedDependency[OpsAccess]
) -> Response[bytes]:
    ops.require(request.headers.get("authorization"))
    return Response(encode(await service.status.status()), media_type=JSON, headers={"cache-control": "no-store"})


@get("/openapi.json")
async def openapi_schema() -> Response[bytes]:
    return Response(OPENAPI, media_type=JSON)
