"""The workers behind each tier and what their telemetry says: discovery, freshness, in-flight accounting.

Sources, in order of preference:
- Redis (`redis.url` set): every worker's TTL'd heartbeat under `workers:<tier>:` (workers.telemetry),
  so a tier may have several workers, found without configuring their URLs;
- polling: each worker tier's static `base_url` + `/memory` (the worker's `/v1/memory`), and each tier served by
  another engine (vLLM, TGI, Ollama: `tiers.<name>.telemetry`) through its adapter (router.dispatch.telemetry);
- the static `base_url` alone, with nothing known about it (always the fallback: Redis down, no poll).

A snapshot older than `discovery.stale_after_s` counts as unknown. Between snapshots, the fleet adds
what this router has sent each worker since (its in-flight bytes), so a burst does not overbook a
worker on one stale reading.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from router.core.config import Config
from router.core.heartbeat import WORKERS_PREFIX, Heartbeat
from router.core.state import StateStore, StateUnavailable
from router.dispatch.counters import Counters
from router.dispatch.telemetry import TelemetryAdapter, adapter_for

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One worker's reading: the fields of its `/v1/memory` (workers.service.WorkerService.memory)."""

    free: int
    kv_bytes_per_token: int
    queue_depth: int = 0
    running: int = 0
    queue_size: int | None = None
    max_tokens_default: int | None = None
    max_tokens_cap: int | None = None
    max_seq_len: int | None = None
    """The worker's context window: prompt and generated tokens together."""
    taken_at: float = 0.0
    """Wall-clock time the worker took it (its `at`), or when the router received it."""
    total: int | None = None
    budget: int | None = None
    reserved: int | None = None
    max_batch_size: int | None = None
    """Requests it decodes at once; `running` below it means free slots (pre-flight's wait estimate reads
    these five, router.dispatch.wait; any engine's adapter can fill them, None where it cannot tell)."""
    queued_prompt_tokens: int | None = None
    """Prompt tokens of its queued requests: prefill work ahead of a new one."""
    step_seconds: float | None = None
    """Recent wall time of one decode step (a token for every running request)."""
    prefill_tokens_per_second: float | None = None
    """Prompt tokens a prefill forward takes per second (beyond its overhead, where that is known)."""
    prefill_overhead_seconds: float | None = None
    """What one prefill forward costs whatever its size (None: not known; the rate then holds it)."""
    prefill_tokens_per_forward: int | None = None
    """Prompt tokens one prefill forward takes at most, several prompts packed (None: one forward per prompt)."""
    mean_completion_tokens: float | None = None
    """Tokens a recently finished request generated, on average: how long a batch slot stays taken."""
    note: str = ""
    """How an engine's reading was derived (e.g. a KV-cache usage fraction into tokens), shown in `/ready`."""
    block_size: int = 1
    """Tokens per KV-cache block: the worker reserves whole blocks (workers.ledger)."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any], received_at: float) -> Telemetry | None:
        try:
            return cls(
                free=int(raw["free"]),
                kv_bytes_per_token=int(raw["kv_bytes_per_token"]),
                queue_depth=int(raw.get("queue_depth", 0)),
                running=int(raw.get("running", 0)),
                queue_size=_int_or_none(raw.get("queue_size")),
                max_tokens_default=_int_or_none(raw.get("max_tokens_default")),
                max_tokens_cap=_int_or_none(raw.get("max_tokens_cap")),
                max_seq_len=_int_or_none(raw.get("max_seq_len")),
                taken_at=float(raw.get("at", received_at)),
                total=_int_or_none(raw.get("total")),
                budget=_int_or_none(raw.get("budget")),
                reserved=_int_or_none(raw.get("reserved")),
                max_batch_size=_int_or_none(raw.get("max_batch_size")),
                queued_prompt_tokens=_int_or_none(raw.get("queued_prompt_tokens")),
                step_seconds=_float_or_none(raw.get("step_seconds")),
                prefill_tokens_per_second=_float_or_none(raw.get("prefill_tokens_per_second")),
                prefill_overhead_seconds=_float_or_none(raw.get("prefill_overhead_seconds")),
                prefill_tokens_per_forward=_int_or_none(raw.get("prefill_tokens_per_forward")),
                mean_completion_tokens=_float_or_none(raw.get("mean_completion_tokens")),
                note=str(raw.get("note", "")),
                block_size=max(1, int(raw.get("block_size") or 1)),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    tier: str
    base_url: str
    source: str
    """`redis`, `poll` or `static`."""
    telemetry: Telemetry | None = None
    ready: bool = True


@dataclass
class _InFlight:
    started_at: float
    bytes: int


@dataclass
class Fleet:
    """The live view the router decides from; `refresh` reads the sources, `endpoints` answers from memory."""

    config: Config
    store: StateStore | None
    client: httpx.AsyncClient | None
    clock: Callable[[], float] = time.time
    headers: dict[str, str] = field(default_factory=dict)
    """Sent with each poll (the worker token, when workers require one)."""
    tier_headers: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per tier, sent with its polls instead (an engine's API key: the tier backend's own authorization)."""
    _discovered: dict[str, list[Endpoint]] = field(default_factory=dict)
    _polled: dict[str, Endpoint] = field(default_factory=dict)
    _in_flight: dict[str, dict[int, _InFlight]] = field(default_factory=dict)
    _tickets: itertools.count[int] = field(default_factory=itertools.count)
    redis_ok: bool | None = None
    """None until Redis was asked (or without Redis), then whether the last scan worked."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Heartbeats ignored since start, by reason: `malformed`, `foreign` (no such worker tier), `url_not_allowed`."""
    _first_read: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per record: the `at` it carried and the time it counts as taken."""
    counters: Counters | None = None
    """The dispatcher's, once it exists: rejections are exported as `tiered_router_discovery_rejected_total`."""
    _adapters: dict[str, TelemetryAdapter] = field(default_factory=dict)
    """Each polled tier's adapter, kept between polls: it averages an engine's counters over its recent readings."""

    @property
    def watched_tiers(self) -> list[str]:
        """Tiers whose telemetry is read (`telemetry` not `none`): pre-flight decides on them."""
        return [name for name, tier in self.config.tiers.items() if tier.telemetry_source() != "none"]

    def endpoints(self, tier: str) -> list[Endpoint]:
        """Every known worker of `tier`, fresh or not; the static base_url when nothing else is known."""
        found = [e for e in self._discovered.get(tier, []) if self._fresh(e)] if self.redis_ok else []
        if found:
            return found
        polled = self._polled.get(tier)
        if polled is not None:
            return [polled]
        return [Endpoint(tier, self.config.tiers[tier].base_url, "static")]

    def fresh(self, endpoint: Endpoint) -> Telemetry | None:
        """The endpoint's telemetry if it is recent enough to decide on, else None (unknown)."""
        return endpoint.telemetry if self._fresh(endpoint) else None

    def in_flight_bytes(self, endpoint: Endpoint) -> int:
        """Bytes this router sent to the worker after its telemetry was taken (not yet in its `free`)."""
        taken = endpoint.telemetry.taken_at if endpoint.telemetry else 0.0
        flights = self._in_flight.get(endpoint.base_url, {})
        return sum(f.bytes for f in flights.values() if f.started_at >= taken)

    def sent_since(self, endpoint: Endpoint) -> int:
        """Requests this router sent the worker after its telemetry was taken (queued or running there by now)."""
        taken = endpoint.telemetry.taken_at if endpoint.telemetry else 0.0
        return sum(1 for f in self._in_flight.get(endpoint.base_url, {}).values() if f.started_at >= taken)

    def start(self, endpoint: Endpoint, needed: int) -> int:
        """Record a request sent to `endpoint` (until `finish`); returns its ticket."""
        ticket = next(self._tickets)
        self._in_flight.setdefault(endpoint.base_url, {})[ticket] = _InFlight(self.clock(), needed)
        return ticket

    def finish(self, endpoint: Endpoint, ticket: int) -> None:
        self._in_flight.get(endpoint.base_url, {}).pop(ticket, None)

    async def refresh(self) -> None:
        if self.store is not None and self.store.backend == "redis":
            await self._scan_redis()
        # Without Redis (or while it is down), each worker tier's static URL is asked directly; other engines
        # publish nothing in Redis, so they are always asked.
        if self.client is not None:
            await asyncio.gather(*(self._poll(tier) for tier in self.watched_tiers if self._polled_now(tier)))

    def _polled_now(self, tier: str) -> bool:
        if self.config.tiers[tier].telemetry_source() != "ours":
            return True
        return self.config.discovery.poll and self.redis_ok is not True

    async def run_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # never let a bad reading stop discovery
                log.exception("worker discovery failed")
            await asyncio.sleep(self.config.discovery.interval_s)

    async def _scan_redis(self) -> None:
        assert self.store is not None
        try:
            records = await self.store.scan(WORKERS_PREFIX)
        except StateUnavailable as exc:
            if self.redis_ok is not False:
                log.warning("worker discovery: redis unavailable (%s); routing on static URLs", exc)
            self.redis_ok = False
            return
        if self.redis_ok is False:
            log.info("worker discovery: redis is back")
        self.redis_ok = True
        now = self.clock()
        found: dict[str, list[Endpoint]] = {}
        seen: dict[str, tuple[float, float]] = {}
        for key, value in records.items():
            try:
                beat = msgspec.json.decode(value, type=Heartbeat)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._reject(key, "malformed")
                continue
            tier = self.config.tiers.get(beat.tier)
            if tier is None or tier.kind != "worker" or not key.startswith(f"{WORKERS_PREFIX}{beat.tier}:"):
                self._reject(key, "foreign")
                continue
            if not allowed_url(beat.url, tier.base_url, tier.discover_from):
                self._reject(key, "url_not_allowed")
                continue
            # A heartbeat from the future would stay "fresh" for ever: it counts as taken when this router first
            # read it (the same record read again is no newer), never later than the router's clock.
            first = self._first_read.get(key)
            at = first[1] if first is not None and first[0] == beat.at else min(beat.at, now)
            seen[key] = (beat.at, at)
            telemetry = None
            if beat.memory is not None:
                telemetry = Telemetry.parse({**beat.memory, "at": at}, now)
            found.setdefault(beat.tier, []).append(Endpoint(beat.tier, beat.url, "redis", telemetry, beat.ready))
        self._discovered, self._first_read = found, seen

    def _reject(self, key: str, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if self.counters is not None:
            self.counters.inc("discovery_rejected", reason=reason)
        if self.rejected[reason] in (1, 10, 100) or self.rejected[reason] % 1000 == 0:
            log.warning("worker discovery: ignored %s (%s; %d so far)", key, reason, self.rejected[reason])

    async def _poll(self, tier: str) -> None:
        assert self.client is not None
        adapter = self._adapters.get(tier)
        if adapter is None:
            adapter = adapter_for(self.config.tiers[tier])
            assert adapter is not None
            self._adapters[tier] = adapter
        try:
            headers = self.tier_headers.get(tier, self.headers)
            raw = await adapter.read(self.client, headers, self.config.discovery.interval_s * 2)
        except (httpx.HTTPError, ValueError):
            raw = None
        telemetry = Telemetry.parse(raw, self.clock()) if isinstance(raw, dict) else None
        if telemetry is None:
            self._polled.pop(tier, None)  # unreachable or not a worker: unknown, so tried and reacted to
            return
        self._polled[tier] = Endpoint(tier, self.config.tiers[tier].base_url, "poll", telemetry)

    def _fresh(self, endpoint: Endpoint) -> bool:
        telemetry = endpoint.telemetry
        return telemetry is not None and self.clock() - telemetry.taken_at <= self.config.discovery.stale_after_s


def allowed_url(url: str, static: str, allowed: list[str]) -> bool:
    """May a heartbeat's URL serve a tier whose static URL is `static` and whose `discover_from` is `allowed`?"""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return False
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return False
    if not allowed:
        return url.rstrip("/") == static.rstrip("/")
    host = parsed.host
    for entry in allowed:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if host.lower() == entry.lower():
                return True
            continue
        try:
            if ipaddress.ip_address(host) in network:
                return True
        except ValueError:
            continue
    return False


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value >= 0 else None
