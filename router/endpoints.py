"""Thin HTTP endpoints: decode, call the routing service, encode."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Stream

from router.protocol import ModelCard, ModelList, encode
from router.service import RoutingService, decision_headers, parse_chat_request
from router.sse import relay

JSON = "application/json"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@post("/v1/chat/completions", status_code=200)
async def chat_completions(
    request: Request[Any, Any, State], service: NamedDependency[RoutingService]
) -> Response[bytes] | Stream:
    chat = parse_chat_request(await request.body())
    decision = await service.decide(chat, request.headers)
    if chat.stream:
        opened = await service.open_stream(chat, decision)
        headers = {**opened.headers, **SSE_HEADERS}
        return Stream(relay(opened.chunks), media_type="text/event-stream", headers=headers)
    answer = await service.complete(chat, decision)
    return Response(answer.body, media_type=JSON, headers=answer.headers)


@post("/v1/route", status_code=200)
async def route(request: Request[Any, Any, State], service: NamedDependency[RoutingService]) -> Response[bytes]:
    chat = parse_chat_request(await request.body())
    decision = await service.decide(chat, request.headers)
    return Response(encode(decision), media_type=JSON, headers=decision_headers(decision))


@get("/v1/models")
async def list_models(service: NamedDependency[RoutingService]) -> Response[bytes]:
    cards = [ModelCard(id=name) for name in service.rules.model_names()]
    return Response(encode(ModelList(cards)), media_type=JSON)


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready")
async def ready(service: NamedDependency[RoutingService]) -> Response[bytes]:
    report = await service.readiness()
    return Response(encode(report), media_type=JSON, status_code=200 if report["ready"] else 503)
