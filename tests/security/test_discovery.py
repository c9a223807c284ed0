"""Issue 17, trust in discovery: a heartbeat written into Redis by someone else cannot redirect a tier's traffic,
cannot stay fresh for ever, and a malformed or foreign one is ignored and counted. A real Redis, a real router,
stand-ins for the tiers and a canary server where an attacker would want the prompts to go."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import msgspec
import pytest
import redis

from router.core.heartbeat import Heartbeat
from router.devtools.standin import Standin, StandinSettings
from tests.helpers import RouterFactory, router_yaml
from tests.servers import ServerThread, redis_server

MEMORY = {"free": 10**12, "kv_bytes_per_token": 1, "queue_depth": 0, "running": 0, "queue_size": 64}


@pytest.fixture
def private_redis() -> Iterator[str]:
    with redis_server() as url:
        yield url


def beat(url: str, at: float, tier: str = "small") -> bytes:
    return msgspec.json.encode(Heartbeat(tier, url, ready=True, detail="ready", at=at, memory=MEMORY))


def test_a_written_heartbeat_does_not_redirect_a_tier(
    start_router: RouterFactory, standins: dict[str, ServerThread], private_redis: str
) -> None:
    canary = ServerThread(Standin(StandinSettings(name="canary")))
    with canary:
        raw = router_yaml(*(f"{standins[t].url}/v1" for t in ("small", "large", "remote")))
        raw["tiers"]["small"].pop("discover_from")  # the default: only the static URL is trusted
        raw["redis"] = {"url": private_redis, "prefix": "tiered-router:"}
        raw["discovery"] = {"interval_s": 0.2, "stale_after_s": 3.0, "poll": False}
        store = redis.Redis.from_url(private_redis)
        evil = "tiered-router:workers:small:evil:1"
        store.set(evil, beat(f"{canary.url}/v1", time.time() + 10**9), ex=60)
        store.set("tiered-router:workers:small:junk:1", b"{not a heartbeat", ex=60)
        store.set("tiered-router:workers:remote:x:1", beat(f"{canary.url}/v1", time.time(), tier="remote"), ex=60)
        router = start_router(raw)
        time.sleep(0.6)  # a few discovery rounds
        for _ in range(5):
            answer = httpx.post(
                f"{router.url}/v1/chat/completions", json={"model": "small", "messages": HI}, timeout=10
            )
            assert answer.json()["model"] == "small", "served by the static worker, not the canary"
        assert httpx.get(f"{canary.url}/_standin/requests").json() == [], "no prompt reached the canary"
        rejected = httpx.get(f"{router.url}/ready").json()["discovery"]["rejected"]
        assert rejected.get("url_not_allowed", 0) >= 1 and rejected.get("malformed", 0) >= 1
        assert rejected.get("foreign", 0) >= 1
        metrics = httpx.get(f"{router.url}/metrics").text
        assert 'tiered_router_discovery_rejected_total{reason="url_not_allowed"}' in metrics


def test_a_heartbeat_from_the_future_goes_stale_like_any_other(private_redis: str) -> None:
    import asyncio

    from router.core.config import load_config
    from router.core.state import RedisStore
    from router.dispatch.fleet import Fleet
    from tests.helpers import REPO

    config = load_config(REPO / "config" / "router.yaml", environ={})
    now = [time.time()]

    async def scenario() -> None:
        store = RedisStore.from_url(private_redis, "future:")
        try:
            static = config.tiers["small"].base_url
            await store.put("workers:small:127.0.0.1:8001", beat(static, now[0] + 10**9), ttl_s=60)
            fleet = Fleet(config, store, None, clock=lambda: now[0])
            await fleet.refresh()
            assert fleet.fresh(fleet.endpoints("small")[0]) is not None, "taken as written now"
            now[0] += config.discovery.stale_after_s + 1
            await fleet.refresh()
            assert all(fleet.fresh(e) is None for e in fleet.endpoints("small")), "stale once the router's clock moves"
        finally:
            await store.close()

    asyncio.run(scenario())


HI = [{"role": "user", "content": "hi"}]
