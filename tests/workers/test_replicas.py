"""Several router replicas on one Redis, as deploy/kubernetes runs them: three real routers on loopback, one real
redis-server, two real workers heartbeating into it, and a mixed load spread over the replicas. Per-key limits and
the routing counts are exact across replicas, and every replica's discovery sees every worker."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import redis

from router.decide.access import hash_key
from router.devtools.standin import Standin, StandinSettings
from tests.helpers import RouterFactory, WorkerFactory, router_yaml
from tests.servers import ServerThread, free_port, redis_server

ADMIN = "replica-admin-key"
KEYS = {"team": "sk-team-0123456789", "rpm": "sk-rpm-0123456789", "tpm": "sk-tpm-0123456789"}
ENV = {"TEST_REMOTE_KEY": "sk-test-secret-key", "ADMIN_KEY": ADMIN}
REPLICAS = 3


def config(small: str, large: str, remote: str, redis_url: str) -> dict[str, Any]:
    raw = router_yaml(small, large, remote)
    raw["redis"] = {"url": redis_url, "prefix": "replicas:"}
    raw["server"]["admin_key_env"] = "ADMIN_KEY"
    raw["classifier"] = {"kind": "heuristic"}
    for tier in raw["tiers"].values():
        tier["guardrails"] = False  # a held stream's first chunk reaches the client (no output rail holds it back)
    keys = [
        {"name": "team", "sha256": hash_key(KEYS["team"]), "force_tiers": True},
        # Token buckets: rpm 3 refills one request every 20 s, tpm 1000 about 400 tokens in 24 s; the load below is
        # decided well within that, so exactly the bucket's size is admitted.
        {"name": "rpm", "sha256": hash_key(KEYS["rpm"]), "force_tiers": True, "rpm": 3},
        {"name": "tpm", "sha256": hash_key(KEYS["tpm"]), "force_tiers": True, "tpm": 1000},
    ]
    raw["auth"] = {"enabled": True, "keys": keys, "redis_keys": False}
    return raw


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[key]}"}


def discovered(router: ServerThread) -> set[str]:
    ready = httpx.get(f"{router.url}/ready", headers={"authorization": f"Bearer {ADMIN}"}).json()
    return {w["url"] for w in ready["workers"].get("small", []) if w["source"] == "redis" and w["fresh"]}


def test_three_replicas_share_limits_counts_and_discovery(
    start_worker: WorkerFactory, start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    release = threading.Event()
    large = ServerThread(Standin(StandinSettings(name="large", hold_after_first=release)))
    with redis_server() as url, large:
        shared = {"url": url, "prefix": "replicas:"}
        workers = [
            start_worker("small", model="demo:small", redis=shared, heartbeat_s=0.2, port=free_port()) for _ in "ab"
        ]
        raw = config(f"{workers[0].url}/v1", f"{large.url}/v1", f"{standins['remote'].url}/v1", url)
        routers = [start_router(raw, environ=ENV) for _ in range(REPLICAS)]

        # Discovery: every replica sees both workers through their heartbeats (the second is not in any config).
        want = {f"{w.url}/v1" for w in workers}
        deadline = time.monotonic() + 20
        while any(discovered(r) != want for r in routers):
            assert time.monotonic() < deadline, [discovered(r) for r in routers]
            time.sleep(0.05)

        # Held streams from the two limited keys, spread over the replicas: each is admitted (200, its first chunk
        # arrives, then the stand-in holds it) or refused (429) before any admitted one ends and settles its tokens.
        decided: list[tuple[str, int]] = []
        lock = threading.Lock()
        all_decided = threading.Semaphore(0)

        def held(key: str, i: int) -> None:
            body = {"model": "large", "messages": [{"role": "user", "content": f"hold {i}"}], "stream": True}
            if key == "tpm":
                body["max_tokens"] = 400  # reserves ~405 of the key's 1000 a minute: two fit, not three
            endpoint = f"{routers[i % REPLICAS].url}/v1/chat/completions"
            with httpx.stream("POST", endpoint, json=body, headers=auth(key), timeout=60) as r:
                if r.status_code == 200:
                    lines = r.iter_lines()
                    next(lines)  # its first chunk: admitted and streaming
                else:
                    r.read()
                with lock:
                    decided.append((key, r.status_code))
                all_decided.release()
                if r.status_code == 200:
                    for _ in lines:  # until the stand-in is released
                        pass
                else:
                    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded", r.text

        def plain(tier: str, i: int) -> str:
            body = {"model": tier, "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 4}
            router = routers[i % REPLICAS]
            response = httpx.post(f"{router.url}/v1/chat/completions", json=body, headers=auth("team"), timeout=120)
            assert response.status_code == 200, response.text
            return tier

        jobs = [("rpm", i) for i in range(12)] + [("tpm", i) for i in range(9)]
        with ThreadPoolExecutor(len(jobs)) as streams, ThreadPoolExecutor(4) as pool:
            try:
                futures = [streams.submit(held, key, i) for key, i in jobs]
                mixed = list(pool.map(plain, ["small"] * 6 + ["remote"] * 4, range(10)))
                for _ in jobs:
                    assert all_decided.acquire(timeout=60), [f.exception() for f in futures if f.done()]
                admitted = Counter(key for key, status in decided if status == 200)
            finally:
                release.set()
            for future in futures:
                future.result()
        assert admitted == {"rpm": 3, "tpm": 2}, decided
        assert len(decided) == len(jobs)

        # The routing counts: each replica flushes its own into Redis (at the latest when it stops).
        for router in routers:
            router.__exit__(None, None, None)
        client = redis.Redis.from_url(url, decode_responses=True)
        counts = {tier: int(n) for tier, n in client.hgetall("replicas:counts:routed").items()}
        client.close()
        expected = Counter(mixed) + Counter({"large": 3 + 2})
        assert counts == dict(expected), counts
