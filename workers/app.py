"""The worker's Litestar app: serves one model over the OpenAI chat API, plus /ready and /v1/memory.

The model loads in the background after start-up (progress in the log); until it is ready, chat
requests get 503 `not_ready` and `/ready` says so. The app knows nothing about CUDA: building the
engine is `workers.setup`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.response import Stream

from router.core.config import Config, worker_token
from router.core.logs import send_request_id, with_request_id
from router.core.state import create_store
from router.wire.bearer import require_bearer
from router.wire.decode import parse_chat_request
from router.wire.handlers import exception_handlers
from router.wire.protocol import ModelCard, ModelList, encode
from workers.engine import EngineError, FaultHook, QueueFull
from workers.errors import NotReady, from_engine_error
from workers.ledger import VramExhausted
from workers.memory import MemoryProbe
from workers.metrics import render
from workers.setup import build_service
from workers.state import WorkerState
from workers.telemetry import heartbeat_forever

log = logging.getLogger(__name__)
access = logging.getLogger("workers.access")
JSON = "application/json"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@post("/v1/chat/completions", status_code=200)
async def chat_completions(
    request: Request[Any, Any, State], worker: NamedDependency[WorkerState]
) -> Response[bytes] | Stream:
    service = worker.ready()
    started = time.perf_counter()
    chat = parse_chat_request(await request.body())
    try:
        if chat.stream:
            chunks = await service.open_stream(chat)
            access.info("stream started", extra={"tier": worker.tier, "seconds": time.perf_counter() - started})
            return Stream(chunks, media_type="text/event-stream", headers=SSE_HEADERS)
        completion = await service.complete(chat)
    except (VramExhausted, QueueFull, EngineError) as exc:
        error = from_engine_error(exc)
        access.info("refused", extra={"tier": worker.tier, "status": error.status_code, "code": error.code})
        raise error from exc
    usage = completion.usage
    fields = {"tier": worker.tier, "seconds": round(time.perf_counter() - started, 4)}
    if usage is not None:
        fields.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
    access.info("completion", extra=fields)
    return Response(encode(completion), media_type=JSON)


@get("/v1/models")
async def list_models(worker: NamedDependency[WorkerState]) -> Response[bytes]:
    name = worker.config.served_name or worker.tier
    return Response(encode(ModelList([ModelCard(id=name)])), media_type=JSON)


@get("/v1/memory")
async def memory(worker: NamedDependency[WorkerState]) -> Response[bytes]:
    return Response(encode(worker.ready().memory()), media_type=JSON)


@get("/metrics")
async def metrics(worker: NamedDependency[WorkerState]) -> Response[bytes]:
    return Response(render(worker.registry), media_type="text/plain; version=0.0.4; charset=utf-8")


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready")
async def ready(worker: NamedDependency[WorkerState]) -> Response[bytes]:
    with contextlib.suppress(NotReady):
        worker.ready()
    if worker.service is None:
        return Response(encode({"ready": False, "detail": worker.detail}), media_type=JSON, status_code=503)
    return Response(encode({"ready": True, **worker.service.status()}), media_type=JSON)


def create_worker_app(
    config: Config,
    tier: str,
    *,
    probe: MemoryProbe | None = None,
    fault_hook: FaultHook | None = None,
    heartbeat_s: float = 1.0,
    host: str | None = None,
    port: int | None = None,
) -> Litestar:
    """The worker for `tier`. `probe` simulates a GPU in tests; `fault_hook` injects failures into the engine.

    `host` and `port` override the config's (the CLI's flags): they are the address the worker advertises.
    """
    settings = config.worker(tier)
    advertised = {"host": host or settings.host, "port": settings.port if port is None else port}
    settings = msgspec.structs.replace(settings, **advertised)
    worker = WorkerState(tier, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        state_store = create_store(config.redis.url, config.redis.prefix) if config.redis.url else None
        loading = asyncio.create_task(_load(config, worker, probe, fault_hook), name="load-model")
        heartbeat = (
            asyncio.create_task(heartbeat_forever(state_store, worker, heartbeat_s), name="heartbeat")
            if state_store is not None
            else None
        )
        try:
            yield
        finally:
            for task in (heartbeat, loading):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if worker.service is not None:
                await asyncio.to_thread(worker.service.engine.stop)
            if state_store is not None:
                await state_store.close()

    provide: Callable[[], WorkerState] = lambda: worker  # noqa: E731
    token = worker_token(config)
    guard = [require_bearer(token)] if token else []
    return Litestar(
        route_handlers=[chat_completions, list_models, memory, metrics, health, ready],
        lifespan=[lifespan],
        middleware=[*guard, with_request_id],
        before_send=[send_request_id],
        dependencies={"worker": Provide(provide, sync_to_thread=False)},
        exception_handlers=exception_handlers(),
        openapi_config=None,
        logging_config=None,
        debug=False,
    )


async def _load(config: Config, worker: WorkerState, probe: MemoryProbe | None, fault_hook: FaultHook | None) -> None:
    try:
        service = await asyncio.to_thread(build_service, config, worker.tier, worker.config, probe, fault_hook)
    except Exception as exc:
        worker.detail = f"loading failed: {type(exc).__name__}: {exc}"
        log.exception("the '%s' worker failed to load its model", worker.tier)
        return
    service.engine.start()
    worker.service = service
    worker.detail = "ready"
    log.info("the '%s' worker is ready: %s", worker.tier, service.memory())
