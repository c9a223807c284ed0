"""Discovery through a real Redis: several workers per tier from their heartbeat records, least loaded first."""

from __future__ import annotations

import asyncio
import time

import msgspec

from router.core.config import Config
from router.core.heartbeat import Heartbeat
from router.core.state import RedisStore
from router.dispatch.fleet import Fleet
from router.dispatch.preflight import plan
from tests.servers import redis_server


def heartbeat(port: int, free: int, queue: int) -> bytes:
    """A record as workers.telemetry.heartbeat (router.core.heartbeat.Heartbeat) writes it."""
    memory = {"free": free, "kv_bytes_per_token": 1000, "queue_depth": queue, "running": 0, "queue_size": 8}
    url = f"http://127.0.0.1:{port}/v1"
    return msgspec.json.encode(Heartbeat("large", url, ready=True, detail="ready", at=time.time(), memory=memory))


def test_several_workers_per_tier_are_found_and_ranked(shipped_config: Config) -> None:
    async def scenario(url: str) -> None:
        store = RedisStore.from_url(url, "discovery-test:")
        try:
            await store.put("workers:large:127.0.0.1:9101", heartbeat(9101, free=10**6, queue=2), ttl_s=5)
            await store.put("workers:large:127.0.0.1:9102", heartbeat(9102, free=10**9, queue=0), ttl_s=5)
            await store.put("workers:large:127.0.0.1:9103", heartbeat(9103, free=10**3, queue=0), ttl_s=5)
            tiers = dict(shipped_config.tiers)
            tiers["large"] = msgspec.structs.replace(tiers["large"], discover_from=["127.0.0.1"])
            fleet = Fleet(msgspec.structs.replace(shipped_config, tiers=tiers), store, None)
            await fleet.refresh()
            assert fleet.redis_ok is True
            endpoints = fleet.endpoints("large")
            assert sorted(e.base_url for e in endpoints) == [f"http://127.0.0.1:{p}/v1" for p in (9101, 9102, 9103)]
            chosen = plan(endpoints, fleet.fresh, fleet.in_flight_bytes, prompt_tokens=100, max_tokens=300)
            # 9102: nothing queued and the most free; 9101 fits but has a queue; 9103 cannot fit 400 tokens.
            assert [t.endpoint.base_url[-7:-3] for t in chosen.targets] == ["9102", "9101"]
        finally:
            await store.close()

    with redis_server() as url:
        asyncio.run(scenario(url))
