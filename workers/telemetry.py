"""Worker telemetry: register in the shared store and publish memory and queue state under a TTL heartbeat.

Routers discover workers by scanning `workers:<tier>:`; a worker that stops beating disappears when its
record expires (three missed beats), so a dead worker is never mistaken for an idle one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import msgspec

from router.core.heartbeat import Heartbeat, worker_key
from router.core.state import StateStore, StateUnavailable

if TYPE_CHECKING:
    from workers.state import WorkerState

log = logging.getLogger(__name__)


def heartbeat(worker: WorkerState) -> Heartbeat:
    cfg = worker.config
    service = worker.service
    if service is None:
        url = cfg.advertise_url or f"http://{cfg.host}:{cfg.port}/v1"
        return Heartbeat(worker.tier, url, ready=False, detail=worker.detail, at=time.time())
    stats, prefill = service.engine.stats, service.engine.pace.prefill_cost
    return Heartbeat(
        worker.tier,
        cfg.advertise_url or f"http://{cfg.host}:{cfg.port}/v1",
        ready=True,
        detail=worker.detail,
        at=time.time(),
        memory=service.memory(),
        queue_depth=stats.queue_depth,
        running=stats.running,
        tokens_per_second=stats.tokens_per_second,
        step_seconds=service.engine.pace.step_seconds,
        prefill_tokens_per_second=prefill.tokens_per_second if prefill else None,
    )


async def heartbeat_forever(store: StateStore, worker: WorkerState, interval_s: float) -> None:
    key = worker_key(worker.tier, worker.config.host, worker.config.port)
    try:
        while True:
            try:
                await store.put(key, msgspec.json.encode(heartbeat(worker)), ttl_s=3 * interval_s)
            except StateUnavailable as exc:
                log.warning("heartbeat not published: %s", exc)
            await asyncio.sleep(interval_s)
    finally:
        with contextlib.suppress(StateUnavailable, asyncio.CancelledError):
            await asyncio.shield(store.delete(key))
