"""Dispatch: send a request along its fallback chain, deciding before an out-of-memory error, losing nothing.

For each tier of the chain (the decided tier, then its fallbacks):
1. a tier lacking a capability the request needs (router.decide.capabilities) is skipped, reason
   `capability:<name>`;
2. pre-flight (router.dispatch.preflight): a tier whose context window the request exceeds, or a worker tier whose
   fresh telemetry says the request will not fit in memory, or whose queue is full, is skipped without being tried;
   so is one where it would wait longer than `routing.max_queue_wait_s` for a first token (`queue_wait`), but
   that tier is come back to, to wait on, after the rest of the chain failed (and the chain's last tier is waited
   on at once: there is nowhere better to go);
3. the request goes to the best worker of the tier (least loaded first, unknown telemetry last), through
   the tier's retry policy, circuit breaker and concurrency limit (router.dispatch.resilience);
4. a refusal before the first byte (503 `vram_exhausted` or `queue_full`, 400 `context_length_exceeded`,
   connection refused, first-byte timeout, the worker dying, a full connection pool, any 5xx) moves on: the next
   worker, then the next tier; but once two tiers answered 500, the request itself is the likely cause and it is
   sent no further.

When every tier was skipped or refused for the request's own reasons (a capability, the context window), the
client gets a 400 (`unsupported_parameter` naming the parameter, or `context_length_exceeded`), not a retryable
503.

All within `routing.fallback_deadline_s`. The route records the fallback and its reason, which the client
sees as `x-router-fallback: <from>-><to>` and `x-router-fallback-reason`. A stream that fails after it
started is continued on the rest of the chain (router.dispatch.continuation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from router.core.config import Config
from router.core.workers import CONTEXT_LENGTH_EXCEEDED
from router.decide.capabilities import Needs, chain_gap, missing, needed_capabilities
from router.decide.conversation import estimate_tokens
from router.dispatch.backends import ContextLengthExceeded, TierBackend, UpstreamReply
from router.dispatch.continuation import ContinuingStream
from router.dispatch.counters import Counters
from router.dispatch.fleet import Endpoint, Fleet, Telemetry
from router.dispatch.gate import HopGate
from router.dispatch.outcome import Route, RoutedStream
from router.dispatch.preflight import CONTEXT_LENGTH, Plan, Target, plan
from router.dispatch.resilience import ResilientCaller
from router.wire.errors import (
    InvalidRequest,
    RelayedClientError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from router.wire.protocol import ChatCompletionRequest, RouteDecision, encode

log = logging.getLogger(__name__)
WORKER_CONTINUATION = {"continue_final_message": True, "add_generation_prompt": False}
"""Our workers continue the final assistant message exactly (workers.service), as vLLM does."""


UNSUPPORTED_PARAMETER = "unsupported_parameter"
"""OpenAI's error code for a parameter the model cannot honour."""


PAYLOAD_500_TIERS = 2
"""A request that two tiers answered with a 500 is not sent to more: what they share is the request itself."""


def reason_of(error: UpstreamError) -> str:
    return error.reason or error.code or type(error).__name__


def _unknown(_: Endpoint) -> Telemetry | None:
    return None


def _nothing(_: Endpoint) -> int:
    return 0


class Dispatcher:
    def __init__(
        self,
        config: Config,
        backends: Mapping[str, TierBackend],
        fleet: Fleet | None = None,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.backends = dict(backends)
        self.fleet = fleet
        self.counters = counters or Counters()
        self.callers = {
            name: ResilientCaller(name, tier.retry, tier.breaker, tier.max_concurrency)
            for name, tier in config.tiers.items()
        }
        self._clock = clock
        self._siblings: dict[tuple[str, str], TierBackend] = {}

    def payload(self, request: ChatCompletionRequest, tier: str, *, continuing: bool = False) -> bytes:
        backend = self.backends[tier]
        body = encode(msgspec.structs.replace(request, model=backend.config.model))
        extra = backend.config.continuation_body or (WORKER_CONTINUATION if backend.config.kind == "worker" else {})
        if continuing and extra:
            merged: dict[str, Any] = {**msgspec.json.decode(body), **extra}
            body = msgspec.json.encode(merged)
        return body

    async def complete(
        self, request: ChatCompletionRequest, decision: RouteDecision, gate: HopGate | None = None
    ) -> tuple[UpstreamReply, Route]:
        chain = [decision.tier, *decision.fallback]
        reply, route = await self._along(request, chain, decision.prompt_tokens, gate=gate)
        assert isinstance(reply, UpstreamReply)
        return reply, route

    async def open_stream(
        self, request: ChatCompletionRequest, decision: RouteDecision, gate: HopGate | None = None
    ) -> tuple[ContinuingStream, Route]:
        chain = [decision.tier, *decision.fallback]
        opened, route = await self._open(request, chain, decision.prompt_tokens, gate=gate)
        rest = chain[chain.index(route.tier) + 1 :]

        async def reopen(continued: ChatCompletionRequest, tiers: list[str]) -> tuple[RoutedStream, Route]:
            sent = sum(estimate_tokens(m.text()) for m in continued.messages[len(request.messages) :])
            return await self._open(continued, tiers, decision.prompt_tokens + sent, continuing=True, gate=gate)

        stream = ContinuingStream(request, opened, route, rest, reopen, self.config.routing.mid_stream, self._continued)
        return stream, route

    def stats(self) -> dict[str, Any]:
        """Counters, with each tier's retries and breaker state (for /ready, later /metrics)."""
        return {
            **self.counters.snapshot(),
            "retries": [{"tier": n, "value": c.stats.retries} for n, c in self.callers.items() if c.stats.retries],
            "breaker": {name: caller.breaker_state for name, caller in self.callers.items() if caller.breaker},
        }

    async def _open(
        self,
        request: ChatCompletionRequest,
        chain: list[str],
        prompt_tokens: int,
        *,
        continuing: bool = False,
        gate: HopGate | None = None,
    ) -> tuple[RoutedStream, Route]:
        stream, route = await self._along(request, chain, prompt_tokens, stream=True, continuing=continuing, gate=gate)
        assert isinstance(stream, RoutedStream)
        return stream, route

    async def _along(
        self,
        request: ChatCompletionRequest,
        chain: list[str],
        prompt_tokens: int,
        *,
        stream: bool = False,
        continuing: bool = False,
        gate: HopGate | None = None,
    ) -> tuple[UpstreamReply | RoutedStream, Route]:
        """Walk the chain. `gate`: asked before each hop (the guard's input rails); a continuation waits for
        the rails to clear the tier before sending, since what it generates goes straight to the client."""
        deadline = self._clock() + self.config.routing.fallback_deadline_s
        needs = needed_capabilities(request)
        first_reason: str | None = None
        last_error: UpstreamError | None = None
        failures: list[str] = []
        unfit: list[str] = []  # failures that are the request's own: a capability lacking, a window too small
        walked = True
        crashed: set[str] = set()  # tiers that answered 500: after two, the payload is the likely cause
        hops = [(tier, False) for tier in chain]  # (tier, patient): a tier skipped for its queue comes back patient
        for i, (tier, patient) in enumerate(hops):
            if len(crashed) >= PAYLOAD_500_TIERS:
                log.warning("tiers %s answered 500 to this request: not sent further along the chain", sorted(crashed))
                walked = False
                break
            if self._clock() >= deadline:
                last_error = UpstreamTimeout(tier, "the fallback deadline passed before any tier answered")
                walked = False
                break
            lacks = missing(self.config.tiers[tier], needs)
            if lacks:  # skipped like a pre-flight refusal, before anything is sent
                unsupported = ", ".join(needs[capability] for capability in lacks)
                checked = Plan([], f"capability:{lacks[0]}", f"it does not support {unsupported}")
            else:
                checked = self._plan(tier, request, prompt_tokens, patient=patient or i == len(hops) - 1)
            if not checked.targets:
                refused = checked.refused or "unknown"
                reason = refused if lacks else f"preflight:{refused}"
                self.counters.inc("refused", tier=tier, reason=refused)
                log.info("pre-flight: tier %s cannot take the request (%s)", tier, checked.detail)
                first_reason = first_reason or reason
                last_error = last_error or UpstreamUnavailable(tier, f"pre-flight: {checked.detail}", code=refused)
                failures.append(f"{tier}: {reason}")
                if lacks or refused == CONTEXT_LENGTH:
                    unfit.append(f"tier '{tier}': {checked.detail}")
                if checked.waiting:
                    hops.append((tier, True))
                continue
            if gate is not None:
                await (gate.cleared(tier) if continuing else gate.before_send(tier))
            payload = self.payload(request, tier, continuing=continuing)  # the same for every worker of the tier
            for target in checked.targets:
                try:
                    result = await self._send(tier, target, payload, stream, deadline)
                except RelayedClientError:
                    raise
                except UpstreamError as exc:
                    first_reason = first_reason or reason_of(exc)
                    last_error = exc
                    failures.append(f"{tier}: {reason_of(exc)}")
                    self.counters.inc("upstream_failures", tier=tier, reason=reason_of(exc))
                    log.warning("tier %s (%s) did not take the request: %s", tier, target.endpoint.base_url, exc)
                    if isinstance(exc, ContextLengthExceeded):
                        unfit.append(exc.message)
                        break  # the tier's other workers share its window
                    if exc.status == 500:
                        crashed.add(tier)
                    continue
                route = Route(tier) if tier == chain[0] else Route(tier, chain[0], first_reason)
                self.counters.inc("served", tier=tier)
                if route.fallback_from:
                    self.counters.inc("fallback", source=chain[0], target=tier, reason=first_reason or "")
                return result, route
        self.counters.inc("failed", reason=first_reason or "deadline")
        assert last_error is not None
        if walked and failures and len(unfit) == len(failures) and not continuing:
            raise self._unservable(request, chain, needs, unfit) from last_error
        if len(failures) > 1:  # one error for the client, naming the request's tier and every failure
            summary = f"no tier of its chain could answer ({'; '.join(failures)})"
            combined = type(last_error)(chain[0], summary, reason=first_reason, status=last_error.status)
            combined.retry_after = last_error.retry_after
            raise combined from last_error
        raise last_error

    def _unservable(
        self, request: ChatCompletionRequest, chain: list[str], needs: Needs, unfit: list[str]
    ) -> InvalidRequest:
        """Every tier of the chain lacked a capability or the room: the client's 400, not a retryable 503."""
        gap = chain_gap(chain, self.config.tiers, needs)
        if gap is not None:
            return InvalidRequest(gap.message, param=gap.param, code=UNSUPPORTED_PARAMETER)
        limit = request.token_limit()
        asked = f" with max_tokens {limit}" if limit is not None else ""
        return InvalidRequest(
            f"this request's prompt{asked} exceeds the context window of every tier it may use ({'; '.join(unfit)})",
            param="messages",
            code=CONTEXT_LENGTH_EXCEEDED,
        )

    def require_capable(self, request: ChatCompletionRequest, decision: RouteDecision) -> None:
        """Before anything is sent: a 400 naming the parameter when no tier of the decision's chain supports what
        the request needs (a tier that lacks it is skipped by the walk)."""
        gap = chain_gap([decision.tier, *decision.fallback], self.config.tiers, needed_capabilities(request))
        if gap is not None:
            raise InvalidRequest(gap.message, param=gap.param, code=UNSUPPORTED_PARAMETER)

    def _plan(self, tier: str, request: ChatCompletionRequest, prompt_tokens: int, *, patient: bool = False) -> Plan:
        """`patient`: any queue wait will do (the tier is the last hope)."""
        config = self.config.tiers[tier]
        limit, window = request.token_limit(), config.context_window
        if config.telemetry_source() == "none" or self.fleet is None or not self.config.routing.preflight:
            static = [Endpoint(tier, config.base_url, "static")]
            return plan(static, _unknown, _nothing, prompt_tokens, limit, window)
        fleet = self.fleet
        max_wait = None if patient else self.config.routing.max_queue_wait_s
        return plan(
            fleet.endpoints(tier),
            fleet.fresh,
            fleet.in_flight_bytes,
            prompt_tokens,
            limit,
            window,
            sent_since=fleet.sent_since,
            max_wait=max_wait,
        )

    async def _send(
        self, tier: str, target: Target, payload: bytes, stream: bool, deadline: float
    ) -> UpstreamReply | RoutedStream:
        backend = self._backend(tier, target.endpoint.base_url)
        caller = self.callers[tier]
        await caller.acquire(deadline)
        fleet = self.fleet
        ticket = fleet.start(target.endpoint, target.needed) if fleet is not None else None

        def end() -> None:
            if fleet is not None and ticket is not None:
                fleet.finish(target.endpoint, ticket)
            caller.release()

        try:
            if stream:
                upstream = await caller.call(lambda: backend.open_stream(payload, self._left(deadline)), deadline)
            else:
                reply = await caller.call(lambda: backend.complete(payload, self._left(deadline)), deadline)
        except BaseException:
            end()
            raise
        if stream:
            return RoutedStream(upstream, end)
        end()
        return reply

    def _left(self, deadline: float) -> float:
        return max(0.001, deadline - self._clock())

    def _backend(self, tier: str, base_url: str) -> TierBackend:
        backend = self.backends[tier]
        if base_url == backend.config.base_url:
            return backend
        key = (tier, base_url)
        if key not in self._siblings:
            self._siblings[key] = backend.at(base_url)
        return self._siblings[key]

    def _continued(self, source: str, target: str, reason: str) -> None:
        self.counters.inc("continued", source=source, target=target, reason=reason)
