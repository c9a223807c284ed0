"""Calling a flaky upstream: retries with backoff and jitter, a circuit breaker, a concurrency limit.

Used for the remote API (and any tier configured with `retry`, `breaker` or `max_concurrency`). Only
failures before the first byte are retried: 429, 5xx, refused connections and first-byte timeouts.
`Retry-After` is honoured, within `max_retry_after_s` and the request's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from router.core.config import BreakerConfig, RetryConfig
from router.wire.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRYABLE = (UpstreamUnavailable, UpstreamTimeout)


def is_retryable(error: UpstreamError) -> bool:
    """429 and 5xx answers, refused connections and timeouts; never a relayed client error."""
    return isinstance(error, RETRYABLE) or (error.status is not None and error.status >= 500)


class BreakerOpen(UpstreamUnavailable):
    code = "breaker_open"


class Busy(UpstreamUnavailable):
    code = "concurrency_limit"


@dataclass
class CircuitBreaker:
    """Closed → open after `failures` consecutive failures; after `reset_s`, one half-open probe decides."""

    settings: BreakerConfig
    clock: Callable[[], float] = time.monotonic
    state: str = "closed"
    failures: int = 0
    opened_at: float = 0.0
    _probing: bool = field(default=False, repr=False)

    def admit(self) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and self.clock() - self.opened_at >= self.settings.reset_s:
            self.state = "half_open"
        if self.state == "half_open" and not self._probing:
            self._probing = True  # exactly one probe at a time
            return True
        return False

    def succeeded(self) -> None:
        self.state, self.failures, self._probing = "closed", 0, False

    def abandoned(self) -> None:
        """The call was cancelled before it answered: no verdict, but a half-open probe slot is free again."""
        self._probing = False

    def failed(self) -> None:
        self._probing = False
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.settings.failures:
            if self.state != "open":
                log.warning("circuit breaker opened after %d failures", self.failures)
            self.state, self.opened_at = "open", self.clock()


@dataclass
class CallStats:
    retries: int = 0
    rejected_by_breaker: int = 0
    rejected_busy: int = 0


class ResilientCaller:
    """Run one upstream call with this tier's retry policy, breaker and concurrency limit."""

    def __init__(
        self,
        tier: str,
        retry: RetryConfig | None,
        breaker: BreakerConfig | None,
        max_concurrency: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.tier = tier
        self.retry = retry
        self.breaker = CircuitBreaker(breaker, clock) if breaker is not None else None
        self._limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._clock = clock
        self._sleep = sleep
        self.stats = CallStats()

    @property
    def breaker_state(self) -> str:
        return self.breaker.state if self.breaker is not None else "none"

    async def call(self, attempt: Callable[[], Awaitable[T]], deadline: float) -> T:
        """Run `attempt`, retrying what `is_retryable` until the retries or the deadline run out."""
        tries = 1 + (self.retry.attempts if self.retry else 0)
        for number in range(1, tries + 1):
            try:
                return await self._once(attempt)
            except BreakerOpen:
                raise
            except UpstreamError as exc:
                if number == tries or not is_retryable(exc):
                    raise
                delay = self._delay(number, exc)
                if delay is None or self._clock() + delay >= deadline:
                    raise
                self.stats.retries += 1
                log.info("tier %s: %s; retry %d in %.2fs", self.tier, exc.code, number, delay)
                await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, attempt: Callable[[], Awaitable[T]]) -> T:
        if self.breaker is not None and not self.breaker.admit():
            self.stats.rejected_by_breaker += 1
            raise BreakerOpen(self.tier, "circuit breaker open after repeated failures")
        try:
            result = await attempt()
        except UpstreamError as exc:
            if self.breaker is not None:
                if is_retryable(exc):
                    self.breaker.failed()
                else:
                    self.breaker.succeeded()  # it answered; the client's request was the problem
            raise
        except BaseException:
            if self.breaker is not None:
                self.breaker.abandoned()
            raise
        if self.breaker is not None:
            self.breaker.succeeded()
        return result

    async def acquire(self, deadline: float) -> None:
        """Take one of the tier's `max_concurrency` slots, waiting until `deadline` at most (then `Busy`).

        Held for the whole request, a stream until it closes; give it back with `release`.
        """
        if self._limit is None:
            return
        try:
            await asyncio.wait_for(self._limit.acquire(), max(0.0, deadline - self._clock()))
        except TimeoutError:
            self.stats.rejected_busy += 1
            raise Busy(self.tier, "too many requests in flight to this tier") from None

    def release(self) -> None:
        if self._limit is not None:
            self._limit.release()

    def _delay(self, number: int, error: UpstreamError) -> float | None:
        """Seconds before retry `number`: Retry-After when given (None if over the cap), else backoff."""
        assert self.retry is not None
        if error.retry_after:
            try:
                wait = float(error.retry_after)
            except ValueError:
                wait = self.retry.backoff_s
            return wait if 0 <= wait <= self.retry.max_retry_after_s else None
        backoff = min(self.retry.max_backoff_s, self.retry.backoff_s * 2 ** (number - 1))
        return float(backoff * random.uniform(0.5, 1.0))  # "equal jitter": never zero, never in lockstep
