"""What the router saw: Prometheus metrics (`/metrics`) and a rolling window of recent requests (`/status`).

Per request: tier served, rule, status, total time, time to first token (streams), classifier score,
tokens in (the router's prompt estimate) and out (the upstream's usage, or content chunks on a stream),
fallback and guardrail block, and whether a worker tier (local) or a remote tier served it: the share served
locally is what the router exists to maximise. The dispatcher's `Counters` (fallbacks by reason, pre-flight refusals,
mid-stream continuations, failures) and each tier's retries and breaker state are exported as they are.
Each app has its own registry, so several routers can live in one process (the tests).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from router.dispatch.counters import Counters
from router.dispatch.outcome import Outcome
from router.dispatch.resilience import ResilientCaller

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
BREAKER_STATES = ("closed", "half_open", "open")
MAX_RECENT = 100_000
"""The status window keeps `window_s` of requests, at most this many (~20 MB at the cap)."""
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')


@dataclass(frozen=True, slots=True)
class RequestRecord:
    at: float
    tier: str
    rule: str
    status: int
    seconds: float
    ttft: float | None = None
    fallback: str | None = None
    reason: str | None = None
    guardrail: str | None = None
    local: bool | None = None
    """Served by a worker tier (True) or a remote one (False); None when no tier served it (blocked, failed)."""


class _DispatchCollector(Collector):
    """Exports the dispatcher's counters and each tier's retries and breaker state at scrape time."""

    def __init__(self, counters: Counters, callers: Callable[[], dict[str, ResilientCaller]]) -> None:
        self._counters = counters
        self._callers = callers

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        for name, series in self._counters.snapshot().items():
            labels = sorted({k for row in series for k in row if k != "value"})
            family = CounterMetricFamily(f"tiered_router_{name}", f"dispatch: {name}", labels=labels)
            for row in series:
                family.add_metric([str(row.get(k, "")) for k in labels], row["value"])
            yield family
        callers = self._callers()
        retries = CounterMetricFamily("tiered_router_upstream_retries", "retries before a first byte", labels=["tier"])
        breaker = GaugeMetricFamily("tiered_router_breaker_state", "1 for the current state", labels=["tier", "state"])
        rejected = CounterMetricFamily(
            "tiered_router_upstream_rejected",
            "calls not made: breaker open or concurrency limit",
            labels=["tier", "reason"],
        )
        for tier, caller in callers.items():
            retries.add_metric([tier], caller.stats.retries)
            rejected.add_metric([tier, "breaker_open"], caller.stats.rejected_by_breaker)
            rejected.add_metric([tier, "concurrency_limit"], caller.stats.rejected_busy)
            if caller.breaker is not None:
                for state in BREAKER_STATES:
                    breaker.add_metric([tier, state], 1.0 if caller.breaker_state == state else 0.0)
        yield retries
        yield rejected
        yield breaker


class _LocalShareCollector(Collector):
    """`tiered_router_local_share`: of the requests served in the status window, the share workers served."""

    def __init__(self, observer: Observer) -> None:
        self._observer = observer

    def collect(self) -> Iterable[GaugeMetricFamily]:
        share = GaugeMetricFamily(
            "tiered_router_local_share", "share of requests served by worker tiers, status window", labels=[]
        )
        served = self._observer.served(self._observer.window_s)
        if served["local_share"] is not None:  # no sample rather than a made-up one before anything was served
            share.add_metric([], float(served["local_share"]))
        yield share


class Observer:
    def __init__(
        self,
        counters: Counters,
        callers: Callable[[], dict[str, ResilientCaller]],
        *,
        window_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        is_local: Callable[[str], bool] = lambda _tier: False,
    ) -> None:
        """`is_local`: whether a tier is one of ours (a worker) rather than a remote API."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tiered_router_requests", "chat requests", ["tier", "rule", "status"], registry=r)
        self.duration = Histogram(
            "tiered_router_request_seconds", "total time", ["tier", "stream"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "tiered_router_time_to_first_token_seconds", "streams", ["tier"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.score = Histogram("tiered_router_classifier_score", "complexity", buckets=SCORE_BUCKETS, registry=r)
        self.tokens = Counter("tiered_router_tokens", "tokens in and out", ["tier", "direction"], registry=r)
        self.blocks = Counter("tiered_router_guardrail_blocks", "requests blocked", ["rail"], registry=r)
        self.locality = Counter(
            "tiered_router_served", "requests served, by where: local (a worker tier) or remote", ["where"], registry=r
        )
        r.register(_DispatchCollector(counters, callers))
        r.register(_LocalShareCollector(self))
        self._is_local = is_local
        self.window_s = window_s
        self.recent: deque[RequestRecord] = deque(maxlen=MAX_RECENT)
        self._clock = clock

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def scored(self, score: float) -> None:
        self.score.observe(min(max(score, 0.0), 1.0))

    def record(self, outcome: Outcome) -> None:
        """One finished request, from its Outcome: the Prometheus series and the status window."""
        served = outcome.route is not None and outcome.guard != "blocked"  # a block's refusal is the router's
        local = self._is_local(outcome.route.tier) if served and outcome.route is not None else None
        record = RequestRecord(
            at=time.time(),
            tier=outcome.tier,
            rule=outcome.rule,
            status=outcome.status,
            seconds=outcome.seconds,
            ttft=outcome.ttft,
            fallback=outcome.fallback,
            reason=outcome.route.reason if outcome.fallback and outcome.route else None,
            guardrail=outcome.blocked_by,
            local=local,
        )
        if local is not None:
            self.locality.labels("local" if local else "remote").inc()
        self.requests.labels(record.tier, record.rule, str(record.status)).inc()
        self.duration.labels(record.tier, "true" if outcome.stream else "false").observe(record.seconds)
        if record.ttft is not None:
            self.ttft.labels(record.tier).observe(record.ttft)
        if outcome.tokens_in:
            self.tokens.labels(record.tier, "in").inc(outcome.tokens_in)
        if outcome.tokens_out:
            self.tokens.labels(record.tier, "out").inc(outcome.tokens_out)
        if record.guardrail:
            self.blocks.labels(record.guardrail).inc()
        self.recent.append(record)
        horizon = self._clock() - self.window_s
        while self.recent and self.recent[0].at < horizon:
            self.recent.popleft()

    async def watch(
        self, chunks: AsyncIterator[bytes], started: float, done: Callable[[float | None, float, int], None]
    ) -> AsyncIterator[bytes]:
        """Relay a stream, timing its first content and counting content chunks; `done(ttft, total, chunks)`."""
        first: float | None = None
        count = 0
        try:
            async for chunk in chunks:
                contents = chunk.count(b'"content":"') - chunk.count(b'"content":""')
                if contents > 0:
                    count += contents
                    if first is None:
                        first = time.perf_counter() - started
                yield chunk
        finally:
            done(first, time.perf_counter() - started, count)

    def served(self, span_s: float) -> dict[str, int | float | None]:
        """Requests served in the last `span_s` seconds, locally (worker tiers) and remotely, and the local share."""
        start = self._clock() - span_s
        local = remote = 0
        for rec in self.recent:
            if rec.at >= start and rec.local is not None:
                local, remote = (local + 1, remote) if rec.local else (local, remote + 1)
        total = local + remote
        return {"local": local, "remote": remote, "local_share": local / total if total else None}

    def summary(self, bucket_s: float = 10.0, span_s: float = 300.0) -> dict[str, object]:
        """The last `span_s` seconds in buckets: the routing mix, latency percentiles, and recent events."""
        now = self._clock()
        start = now - span_s
        buckets = int(span_s // bucket_s)
        mix: list[dict[str, int]] = [{} for _ in range(buckets)]
        latencies: list[list[float]] = [[] for _ in range(buckets)]
        events: list[dict[str, object]] = []
        for rec in self.recent:
            if rec.at < start:
                continue
            i = min(buckets - 1, int((rec.at - start) // bucket_s))
            mix[i][rec.tier] = mix[i].get(rec.tier, 0) + 1
            latencies[i].append(rec.ttft if rec.ttft is not None else rec.seconds)
            if rec.fallback:
                events.append({"at": rec.at, "kind": "fallback", "label": f"{rec.fallback} ({rec.reason})"})
            if rec.guardrail:
                events.append({"at": rec.at, "kind": "block", "label": rec.guardrail})
            if rec.status >= 500:
                events.append({"at": rec.at, "kind": "error", "label": f"{rec.status} on {rec.tier}"})
        return {
            "now": now,
            "bucket_s": bucket_s,
            "span_s": span_s,
            "mix": [{"t": start + i * bucket_s, "tiers": m} for i, m in enumerate(mix)],
            "latency": [{"t": start + i * bucket_s, **_percentiles(v)} for i, v in enumerate(latencies)],
            "events": events[-50:],
            "requests": len(self.recent),
            "served": self.served(span_s),
        }


def completion_tokens(body: bytes) -> int:
    """`usage.completion_tokens` of a completion body, without decoding it (0 if absent)."""
    found = _COMPLETION_TOKENS.search(body)
    return int(found.group(1)) if found else 0


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}
