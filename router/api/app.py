"""The router's Litestar app: the factory and its lifespan (errors render through `router.wire.handlers`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping

import anyio
import httpx
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.types import Scope

from router.api.endpoints import (
    chat_completions,
    health,
    list_models,
    metrics,
    openapi_schema,
    ready,
    retrieve_model,
    route,
    status_data,
    status_page,
)
from router.api.entry import FailedKeys, entry_checks
from router.api.framing import decoded_bodies
from router.api.ops_access import OpsAccess
from router.api.translated import completions, embeddings, responses
from router.core.config import Config, worker_token
from router.core.logs import send_request_id, with_request_id
from router.core.state import StateStore, create_store
from router.decide.classify.base import ComplexityClassifier
from router.decide.classify.registry import build_classifier
from router.dispatch.backends import TierBackend, create_client
from router.dispatch.fleet import Fleet
from router.embeddings import EmbeddingService
from router.guard.rails import Guard
from router.ops.reload import ConfigReloader
from router.pipeline import RoutingService, needs_guard
from router.translate import TranslatingService
from router.wire.handlers import exception_handlers

log = logging.getLogger(__name__)
EXPOSED_HEADERS = [
    "x-router-tier",
    "x-router-rule",
    "x-router-score",
    "x-router-fallback",
    "x-router-fallback-reason",
    "x-router-guardrail",
    "x-router-guardrail-rail",
    "x-request-id",
    "retry-after",
]
"""Response headers a browser client may read under CORS: what `Outcome.headers` writes, the request id, Retry-After."""


PROBE_CONNECTIONS = 16
"""Connections of the pool that discovery polls workers' /v1/memory through."""


def create_app(
    config: Config,
    *,
    http_client: httpx.AsyncClient | None = None,
    store: StateStore | None = None,
    classifier: ComplexityClassifier | None = None,
    guard: Guard | None = None,
    environ: Mapping[str, str] | None = None,
) -> Litestar:
    """Build the router. Injected resources are used as given and left open; the rest are owned here."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # One pool per tier (its max_connections), so streams held on one tier cannot starve another; discovery
        # polls through a small pool of its own.
        clients = {name: http_client or create_client(t.max_connections) for name, t in config.tiers.items()}
        probe_client = http_client or create_client(PROBE_CONNECTIONS)
        state_store = store or create_store(config.redis.url, config.redis.prefix)
        scorer = classifier or build_classifier(config)
        flusher: asyncio.Task[None] | None = None
        discovery: asyncio.Task[None] | None = None
        watcher: asyncio.Task[None] | None = None
        reloader: ConfigReloader | None = None
        embedder: EmbeddingService | None = None
        try:
            await scorer.start()
            token = worker_token(config)
            backends = {
                name: TierBackend(name, tier, clients[name], environ, token) for name, tier in config.tiers.items()
            }
            rails = guard
            if rails is None and needs_guard(config):
                rails = await anyio.to_thread.run_sync(Guard.load, config)
            if rails is not None:
                rails.bind(backends)
            probe_headers = {"authorization": f"Bearer {token}"} if token else {}
            engine_headers = {name: b.authorization() for name, b in backends.items() if b.config.kind == "remote"}
            fleet = Fleet(config, state_store, probe_client, headers=probe_headers, tier_headers=engine_headers)
            await fleet.refresh()  # the first reading before the first request
            discovery = asyncio.create_task(fleet.run_forever(), name="worker-discovery")
            service = RoutingService(config, scorer, backends, state_store, rails, fleet)
            app.state.service = service
            app.state.ops = OpsAccess(config, os.environ if environ is None else environ)
            app.state.translator = TranslatingService(service)
            app.state.embedder = embedder = EmbeddingService(
                service.authenticate, lambda: service.config.embeddings, backends, admit=service.admit_cost
            )
            flusher = asyncio.create_task(service.flush_forever(), name="flush-counts")
            if config.source:
                reloader = service.reloader = ConfigReloader(service, config.source)
                reloader.install_sighup()
                if config.reload.watch:
                    watcher = asyncio.create_task(reloader.watch_forever(config.reload.poll_s), name="config-watch")
            log.info(
                "router ready: classifier=%s state=%s tiers=%s guardrails=%s",
                scorer.name,
                state_store.backend,
                list(backends),
                "on" if rails is not None else "off",
            )
            yield
        finally:
            if reloader is not None:
                reloader.remove_sighup()
            for task in (watcher, discovery):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if flusher is not None:
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
                await app.state.service.flush_counts()
            if embedder is not None:
                embedder.close()
            if classifier is None:
                await scorer.close()
            if store is None:
                await state_store.close()
            if http_client is None:
                for owned in (*clients.values(), probe_client):
                    await owned.aclose()

    return Litestar(
        route_handlers=[
            chat_completions,
            completions,
            embeddings,
            responses,
            route,
            list_models,
            retrieve_model,
            health,
            ready,
            metrics,
            status_page,
            status_data,
            openapi_schema,
        ],
        lifespan=[lifespan],
        middleware=[
            with_request_id,
            entry_checks(_running, FailedKeys(config.auth.failed_keys_per_minute)),
            decoded_bodies(config.server.max_body_bytes),
        ],
        before_send=[send_request_id],
        dependencies={
            "service": Provide(_service, sync_to_thread=False),
            "translator": Provide(_translator, sync_to_thread=False),
            "embedder": Provide(_embedder, sync_to_thread=False),
            "ops": Provide(_ops, sync_to_thread=False),
        },
        exception_handlers=exception_handlers(),
        request_max_body_size=config.server.max_body_bytes,
        cors_config=cors_config(config.server.cors_origins),
        openapi_config=None,
        logging_config=None,  # the process (the CLI) owns logging; see router.cli
        debug=False,
    )


def cors_config(origins: list[str]) -> CORSConfig | None:
    """CORS for browser clients from `server.cors_origins` (none: no CORS headers, browsers stay blocked).

    Only bearer keys authenticate here, never cookies, so credentials stay off; the `x-router-*` headers are
    exposed so a browser client can read where its request went."""
    if not origins:
        return None
    return CORSConfig(allow_origins=list(origins), allow_methods=["GET", "POST"], expose_headers=EXPOSED_HEADERS)


def _running(scope: Scope) -> RoutingService | None:
    """The running pipeline (None before start-up finished)."""
    service: RoutingService | None = scope["app"].state.get("service")
    return service


def _service(state: State) -> RoutingService:
    service: RoutingService = state.service
    return service


def _translator(state: State) -> TranslatingService:
    translator: TranslatingService = state.translator
    return translator


def _ops(state: State) -> OpsAccess:
    ops: OpsAccess = state.ops
    return ops


def _embedder(state: State) -> EmbeddingService:
    embedder: EmbeddingService = state.embedder
    return embedder
