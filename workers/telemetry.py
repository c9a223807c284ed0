"""Worker telemetry: register in the shared store and publish memory and queue state under a TTL heartbeat.

Routers discover workers by scanning `workers:<tier>:`; a worker that stops beating disappears when its
record expires (three missed beats), so a dead worker is never mistaken for an idle one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from router.state import StateStore, StateUnavailable

if TYPE_CHECKING:
    from workers.app import WorkerState

log = logging.getLogger(__name__)


def worker_key(tier: str, host: str, port: int) -> str:
    return f"workers:{tier}:{host}:{port}"


def heartbeat_payload(worker: WorkerState) -> dict[str, Any]:
    cfg = worker.config
    payload: dict[str, Any] = {
        "tier": worker.tier,
        "url": cfg.advertise_url or f"http://{cfg.host}:{cfg.port}/v1",
        "ready": worker.service is not None,
        "detail": worker.detail,
        "at": time.time(),
    }
    if worker.service is not None:
        payload["memory"] = worker.service.memory()
        stats = worker.service.engine.stats
        payload["queue_depth"] = stats.queue_depth
        payload["running"] = stats.running
        payload["tokens_per_second"] = stats.tokens_per_second
    return payload


async def heartbeat_forever(store: StateStore, worker: WorkerState, interval_s: float) -> None:
    key = worker_key(worker.tier, worker.config.host, worker.config.port)
    try:
        while True:
            try:
                await store.put(key, msgspec.json.encode(heartbeat_payload(worker)), ttl_s=3 * interval_s)
            except StateUnavailable as exc:
                log.warning("heartbeat not published: %s", exc)
            await asyncio.sleep(interval_s)
    finally:
        with contextlib.suppress(StateUnavailable, asyncio.CancelledError):
            await asyncio.shield(store.delete(key))
