"""Shared state behind one interface: Redis when `redis.url` is set, an in-process store otherwise.

Holds what router replicas and workers share: TTL'd records (worker heartbeats, discovery)
and counters. Redis exceptions are translated into `StateUnavailable` here, so callers
never see redis-py types.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

from redis import asyncio as aioredis
from redis.exceptions import RedisError

ADMIT_LUA = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost_r, cost_t, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if (rpm > 0 and requests + cost_r > rpm) or (tpm > 0 and tokens + cost_t > tpm) then
  return 0
end
redis.call('INCRBY', KEYS[1], cost_r)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('INCRBY', KEYS[2], cost_t)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""
"""Check both per-window limits and count the request in one atomic step (every replica shares it)."""
REFUND_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('DECRBY', KEYS[1], ARGV[1]) < 0 then
    redis.call('SET', KEYS[1], 0, 'KEEPTTL')
  end
end
return 1
"""


class StateUnavailable(Exception):
    """The store could not be reached or answered with an error."""


class StateStore(ABC):
    backend: str

    @abstractmethod
    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        """Store `value`; with `ttl_s`, it disappears after that many seconds unless put again."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def delete(self, key: str) -> None: ...

    @abstractmethod
    async def scan(self, prefix: str) -> dict[str, bytes]:
        """Every live record whose key starts with `prefix`."""

    @abstractmethod
    async def add_counts(self, name: str, counts: Mapping[str, int]) -> None:
        """Atomically add each count to the named group of counters."""

    @abstractmethod
    async def read_counts(self, name: str) -> dict[str, int]: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True if the store answers now; never raises."""

    @abstractmethod
    async def rate_admit(
        self, key: str, limits: tuple[int, int], cost: tuple[int, int], window_s: float
    ) -> tuple[float, int]:
        """Count `cost` (requests, tokens) against `limits` per fixed window (0: no limit), atomically.

        Returns (0.0, window) when admitted and counted, else (seconds until the window ends, window).
        """

    @abstractmethod
    async def rate_refund(self, key: str, window: int, tokens: int) -> None:
        """Give back tokens counted in `window` that the request did not use (never below zero)."""

    async def close(self) -> None:
        """Release connections."""


class MemoryStore(StateStore):
    """The embedded default: one process, nothing shared, nothing persisted."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._records: dict[str, tuple[bytes, float | None]] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._windows: dict[str, tuple[int, int]] = {}
        self._window = -1
        self._now = clock

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._records[key] = (value, None if ttl_s is None else self._now() + ttl_s)

    async def get(self, key: str) -> bytes | None:
        record = self._records.get(key)
        if record is None:
            return None
        value, expires = record
        if expires is not None and expires <= self._now():
            del self._records[key]
            return None
        return value

    async def delete(self, key: str) -> None:
        self._records.pop(key, None)

    async def scan(self, prefix: str) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for key in [k for k in self._records if k.startswith(prefix)]:
            value = await self.get(key)
            if value is not None:
                found[key] = value
        return found

    async def add_counts(self, name: str, counts: Mapping[str, int]) -> None:
        group = self._counts.setdefault(name, {})
        for field, amount in counts.items():
            group[field] = group.get(field, 0) + amount

    async def read_counts(self, name: str) -> dict[str, int]:
        return dict(self._counts.get(name, {}))

    async def ping(self) -> bool:
        return True

    async def rate_admit(
        self, key: str, limits: tuple[int, int], cost: tuple[int, int], window_s: float
    ) -> tuple[float, int]:
        now = self._now()
        window = int(now // window_s)
        slot = f"rl:{key}:{window}"
        used = self._windows.get(slot, (0, 0))
        if any(limit and used[i] + cost[i] > limit for i, limit in enumerate(limits)):
            return (window + 1) * window_s - now, window
        if window != self._window:  # a new minute: the old windows' counts are dropped
            self._windows, self._window = {}, window
        self._windows[slot] = (used[0] + cost[0], used[1] + cost[1])
        return 0.0, window

    async def rate_refund(self, key: str, window: int, tokens: int) -> None:
        slot = f"rl:{key}:{window}"
        if slot in self._windows:
            requests, used = self._windows[slot]
            self._windows[slot] = (requests, max(0, used - tokens))


class RedisStore(StateStore):
    """Redis-backed state shared by every router replica and worker using the same URL and prefix."""

    backend = "redis"

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._admit = client.register_script(ADMIT_LUA)
        self._refund = client.register_script(REFUND_LUA)

    @classmethod
    def from_url(cls, url: str, prefix: str, *, timeout_s: float = 0.5) -> RedisStore:
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=5
        )
        return cls(client, prefix)

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        async with _translated():
            await self._redis.set(self._prefix + key, value, px=None if ttl_s is None else max(1, int(ttl_s * 1000)))

    async def get(self, key: str) -> bytes | None:
        async with _translated():
            value = await self._redis.get(self._prefix + key)
            return _as_bytes(value) if value is not None else None

    async def delete(self, key: str) -> None:
        async with _translated():
            await self._redis.delete(self._prefix + key)

    async def scan(self, prefix: str) -> dict[str, bytes]:
        async with _translated():
            keys = [k async for k in self._redis.scan_iter(match=_glob_escape(self._prefix + prefix) + "*", count=500)]
            if not keys:
                return {}
            values = await self._redis.mget(keys)
        strip = len(self._prefix)
        return {_as_str(k)[strip:]: _as_bytes(v) for k, v in zip(keys, values, strict=True) if v is not None}

    async def add_counts(self, name: str, counts: Mapping[str, int]) -> None:
        if not counts:
            return
        async with _translated(), self._redis.pipeline(transaction=True) as pipe:
            for field, amount in counts.items():
                pipe.hincrby(self._prefix + "counts:" + name, field, amount)
            await pipe.execute()

    async def read_counts(self, name: str) -> dict[str, int]:
        async with _translated():
            raw = await self._redis.hgetall(self._prefix + "counts:" + name)
        return {_as_str(k): int(v) for k, v in raw.items()}

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def rate_admit(
        self, key: str, limits: tuple[int, int], cost: tuple[int, int], window_s: float
    ) -> tuple[float, int]:
        now = time.time()  # the window is wall-clock aligned, so every replica counts into the same one
        window = int(now // window_s)
        base = f"{self._prefix}rl:{key}:{window}"
        ttl_ms = int(window_s * 2000)
        async with _translated():
            admitted = await self._admit(keys=[base + ":r", base + ":t"], args=[*limits, *cost, ttl_ms])
        return (0.0 if admitted == 1 else (window + 1) * window_s - now), window

    async def rate_refund(self, key: str, window: int, tokens: int) -> None:
        async with _translated():
            await self._refund(keys=[f"{self._prefix}rl:{key}:{window}:t"], args=[tokens])

    async def close(self) -> None:
        await self._redis.aclose()


def create_store(url: str | None, prefix: str) -> StateStore:
    return RedisStore.from_url(url, prefix) if url else MemoryStore()


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StateUnavailable(f"redis: {exc}") from exc


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
