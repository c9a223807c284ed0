"""Thin HTTP endpoints: decode, call the routing service, encode."""

from __future__ import annotations

import time
from importlib.metadata import version
from importlib.resources import files
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Stream

from router.errors import RouterError
from router.openapi import openapi_document
from router.protocol import ModelCard, ModelList, RouteDecision, encode
from router.service import Admission, RoutingService, decision_headers
from router.sse import relay

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
STATUS_PAGE = (files("router") / "data" / "status.html").read_bytes()
OPENAPI = encode(openapi_document(version("tiered-router")))
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@post("/v1/chat/completions", status_code=200)
async def chat_completions(
    request: Request[Any, Any, State], service: NamedDependency[RoutingService]
) -> Response[bytes] | Stream:
    started = time.perf_counter()
    decision: RouteDecision | None = None
    admission: Admission | None = None
    try:
        caller, chat, decision = await service.route(await request.body(), request.headers)
        admission = await service.admit(caller, decision, chat)
        service.observer.scored(decision.score)
        if chat.stream:
            opened = await service.open_stream(chat, decision)
        else:
            answer = await service.complete(chat, decision)
    except RouterError as exc:
        prompt = chat.last_user_text() if decision is not None else None
        seconds = time.perf_counter() - started
        service.observed(decision, exc.headers(), exc.status_code, seconds, prompt=prompt, admission=admission)
        raise
    prompt = chat.last_user_text()
    if not chat.stream:
        seconds = time.perf_counter() - started
        service.observed(decision, answer.headers, 200, seconds, body=answer.body, prompt=prompt, admission=admission)
        return Response(answer.body, media_type=JSON, headers=answer.headers)
    routed, admitted = decision, admission

    def done(ttft: float | None, seconds: float, chunks: int) -> None:
        headers = opened.headers
        service.observed(
            routed, headers, 200, seconds, stream=True, ttft=ttft, chunks=chunks, prompt=prompt, admission=admitted
        )

    chunks = service.observer.watch(relay(opened.chunks), started, done)
    return Stream(chunks, media_type="text/event-stream", headers={**opened.headers, **SSE_HEADERS})


@post("/v1/route", status_code=200)
async def route(request: Request[Any, Any, State], service: NamedDependency[RoutingService]) -> Response[bytes]:
    _, _, decision = await service.route(await request.body(), request.headers)
    return Response(encode(decision), media_type=JSON, headers=decision_headers(decision))


@get("/v1/models")
async def list_models(request: Request[Any, Any, State], service: NamedDependency[RoutingService]) -> Response[bytes]:
    await service.authenticate(request.headers.get("authorization"))
    cards = [ModelCard(id=name) for name in service.rules.model_names()]
    return Response(encode(ModelList(cards)), media_type=JSON)


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready")
async def ready(service: NamedDependency[RoutingService]) -> Response[bytes]:
    report = await service.readiness()
    return Response(encode(report), media_type=JSON, status_code=200 if report["ready"] else 503)


@get("/metrics")
async def metrics(service: NamedDependency[RoutingService]) -> Response[bytes]:
    return Response(service.observer.render(), media_type=PROMETHEUS)


@get("/status")
async def status_page() -> Response[bytes]:
    return Response(STATUS_PAGE, media_type="text/html; charset=utf-8")


@get("/status.json")
async def status_data(service: NamedDependency[RoutingService]) -> Response[bytes]:
    return Response(encode(await service.status()), media_type=JSON, headers={"cache-control": "no-store"})


@get("/openapi.json")
async def openapi_schema() -> Response[bytes]:
    return Response(OPENAPI, media_type=JSON)
