"""The state store contract, run against the in-process store and a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from router.core.state import MemoryStore, RedisStore, StateStore, StateUnavailable, create_store
from tests.servers import free_port


def run(make: Callable[[], StateStore], body: Callable[[StateStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = make()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Callable[[], StateStore]:
    if request.param == "memory":
        return MemoryStore
    url = request.getfixturevalue("redis_url")
    prefix = f"test-{request.node.name}:"
    return lambda: create_store(url, prefix)


def test_records_ttl_scan_delete(make_store: Callable[[], StateStore]) -> None:
    async def body(store: StateStore) -> None:
        await store.put("workers:small:a", b"1", ttl_s=0.2)
        await store.put("workers:small:b", b"2")
        await store.put("workers:large:c", b"3")
        assert await store.get("workers:small:a") == b"1"
        assert await store.scan("workers:small:") == {"workers:small:a": b"1", "workers:small:b": b"2"}
        await asyncio.sleep(0.35)
        assert await store.get("workers:small:a") is None
        assert await store.scan("workers:small:") == {"workers:small:b": b"2"}
        await store.delete("workers:small:b")
        assert await store.get("workers:small:b") is None
        assert await store.ping()

    run(make_store, body)


def test_counters_add_up(make_store: Callable[[], StateStore]) -> None:
    async def body(store: StateStore) -> None:
        await asyncio.gather(*(store.add_counts("routed", {"small": 1, "large": 2}) for _ in range(20)))
        assert await store.read_counts("routed") == {"small": 20, "large": 40}
        assert await store.read_counts("nothing") == {}

    run(make_store, body)


def test_rate_windows_admit_refuse_and_refund(make_store: Callable[[], StateStore]) -> None:
    async def body(store: StateStore) -> None:
        window_s = 3600.0  # one window for the whole test, whatever the clock says
        admitted = [await store.rate_admit("k", (3, 1000), (1, 400), window_s) for _ in range(3)]
        assert [wait for wait, _ in admitted[:2]] == [0.0, 0.0]
        wait, window = admitted[2]
        assert 0 < wait <= window_s, "1,200 tokens do not fit in 1,000: refused, nothing counted"
        await store.rate_refund("k", window, 390)  # the second request used only 10 of its 400
        assert (await store.rate_admit("k", (3, 1000), (1, 400), window_s))[0] == 0.0
        assert (await store.rate_admit("k", (3, 1000), (1, 1), window_s))[0] > 0, "the request limit (3) holds"
        await store.rate_refund("k", window, 10_000)  # never below zero
        assert (await store.rate_admit("other", (0, 0), (1, 10**9), window_s))[0] == 0.0  # 0 means no limit

    run(make_store, body)


def test_two_clients_share_redis_state(redis_url: str) -> None:
    async def main() -> None:
        one, two = create_store(redis_url, "shared:"), create_store(redis_url, "shared:")
        await one.add_counts("routed", {"small": 3})
        await two.add_counts("routed", {"small": 4})
        assert await one.read_counts("routed") == {"small": 7}
        await one.put("k", b"v")
        assert await two.get("k") == b"v"
        await one.close()
        await two.close()

    asyncio.run(main())


def test_unreachable_redis_is_translated() -> None:
    async def main() -> None:
        store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", "x:", timeout_s=0.2)
        assert await store.ping() is False
        with pytest.raises(StateUnavailable):
            await store.put("k", b"v")
        with pytest.raises(StateUnavailable):
            await store.read_counts("routed")
        await store.close()

    asyncio.run(main())
