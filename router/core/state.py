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

BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, capacity)
  local saved = redis.call('HMGET', key, 'level', 'at')
  local lvl, at = tonumber(saved[1]), tonumber(saved[2])
  if lvl == nil then return capacity end
  return math.min(capacity, lvl + math.max(0, now - at) * capacity / 60)
end
local function store(key, lvl)
  redis.call('HSET', key, 'level', tostring(lvl), 'at', tostring(now))
  redis.call('EXPIRE', key, 120)
end
local mode = ARGV[1]
if mode == 'adjust' then
  local capacity, charge = tonumber(ARGV[2]), tonumber(ARGV[3])
  store(KEYS[1], math.min(capacity, level(KEYS[1], capacity) - charge))
  return '0'
end
local rpm, tpm, cost_r, cost_t = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local wait, lr, lt = 0, 0, 0
if rpm > 0 then
  lr = level(KEYS[1], rpm)
  if lr < cost_r then wait = math.max(wait, (cost_r - lr) * 60 / rpm) end
end
if tpm > 0 then
  lt = level(KEYS[2], tpm)
  if lt < cost_t then wait = math.max(wait, (cost_t - lt) * 60 / tpm) end
end
if wait > 0 then return tostring(wait) end
if rpm > 0 then store(KEYS[1], lr - cost_r) end
if tpm > 0 then store(KEYS[2], lt - cost_t) end
return '0'
"""
"""Token buckets, a key's requests and tokens, each refilled at its per-minute limit and holding at most that
much: `admit` takes a request's cost from both or neither (and says how long until it fits), `adjust` charges what
a request used beyond its reservation, or gives back what it did not (the level may go below zero: the key then
waits). One atomic step in Redis, on Redis's clock, so every replica shares the same buckets."""


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
    async def rate_admit(self, key: str, limits: tuple[int, int], cost: tuple[int, int]) -> float:
        """Take `cost` (requests, tokens) from the key's buckets, each refilled at its limit per minute and holding
        at most one minute's worth (0: no limit), atomically. Returns 0.0 when admitted, else the seconds until the
        cost would fit (nothing is taken then)."""

    @abstractmethod
    async def rate_adjust(self, key: str, tpm: int, tokens: int) -> None:
        """Charge `tokens` more to the key's token bucket (negative: give them back, up to its capacity)."""

    async def close(self) -> None:
        """Release connections."""


class MemoryStore(StateStore):
    """The embedded default: one process, nothing shared, nothing persisted."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._records: dict[str, tuple[bytes, float | None]] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        """A rate bucket's level and when it was last updated."""
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

    async def rate_admit(self, key: str, limits: tuple[int, int], cost: tuple[int, int]) -> float:
        now = self._now()
        levels = [self._level(f"{key}:{kind}", limit, now) for kind, limit in zip("rt", limits, strict=True)]
        wait = max(
            [
                (need - level) * 60 / limit
                for need, level, limit in zip(cost, levels, limits, strict=True)
                if limit and level < need
            ],
            default=0.0,
        )
        if wait > 0:
            return wait
        for kind, limit, level, need in zip("rt", limits, levels, cost, strict=True):
            if limit:
                self._buckets[f"{key}:{kind}"] = (level - need, now)
        return 0.0

    async def rate_adjust(self, key: str, tpm: int, tokens: int) -> None:
        if not tpm:
            return
        now = self._now()
        self._buckets[f"{key}:t"] = (min(tpm, self._level(f"{key}:t", tpm, now) - tokens), now)

    def _level(self, bucket: str, capacity: int, now: float) -> float:
        saved = self._buckets.get(bucket)
        if saved is None:
            return float(capacity)
        level, at = saved
        return min(capacity, level + max(0.0, now - at) * capacity / 60)


class RedisStore(StateStore):
    """Redis-backed state shared by every router replica and worker using the same URL and prefix."""

    backend = "redis"

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._bucket = client.register_script(BUCKET_LUA)

    @classmethod
    def from_url(cls, url: str, prefix: str, *, timeout_s: float = 2.0) -> RedisStore:
        """`timeout_s` bounds each connect and each reply. A Redis that is down refuses the connection at once; the
        bound is for one that hangs, and it counts the router's own wait for its event loop too: at 0.5 s, a
        2-core host serving three replicas and thirty streams turned a slow reply into a 503 from the limiter."""
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

    async def rate_admit(self, key: str, limits: tuple[int, int], cost: tuple[int, int]) -> float:
        base = f"{self._prefix}rl:{key}"
        async with _translated():
            wait = await self._bucket(keys=[base + ":r", base + ":t"], args=["admit", *limits, *cost])
        return float(wait)

    async def rate_adjust(self, key: str, tpm: int, tokens: int) -> None:
        if not tpm:
            return
        async with _translated():
            await self._bucket(keys=[f"{self._prefix}rl:{key}:t"], args=["adjust", tpm, tokens])

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
