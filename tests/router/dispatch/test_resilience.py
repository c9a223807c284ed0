"""Retries, Retry-After and the circuit breaker, on a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio
import time

import pytest

from router.core.config import BreakerConfig, RetryConfig
from router.dispatch.resilience import BreakerOpen, ResilientCaller
from router.wire.errors import RouterError, UpstreamBadResponse, UpstreamError, UpstreamUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def failing(*errors: UpstreamError | None):  # type: ignore[no-untyped-def]
    """An attempt that raises the given errors in turn, then answers "ok"; counts its calls."""
    queue = list(errors)
    calls = [0]

    async def attempt() -> str:
        calls[0] += 1
        error = queue.pop(0) if queue else None
        if error is not None:
            raise error
        return "ok"

    return attempt, calls


def unavailable(retry_after: str | None = None) -> UpstreamUnavailable:
    error = UpstreamUnavailable("remote", "answered 503", status=503)
    error.retry_after = retry_after
    return error


def caller(clock: Clock, attempts: int = 3, failures: int = 100) -> ResilientCaller:
    retry = RetryConfig(attempts=attempts, backoff_s=0.2, max_backoff_s=1.0, max_retry_after_s=5.0)
    return ResilientCaller(
        "remote", retry, BreakerConfig(failures=failures, reset_s=10.0), None, clock=clock, sleep=clock.sleep
    )


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_retries_back_off_with_jitter_then_succeed() -> None:
    clock = Clock()
    attempt, calls = failing(unavailable(), unavailable())
    assert run(caller(clock).call(attempt, deadline=60)) == "ok"
    assert calls[0] == 3
    first, second = clock.slept
    assert 0.1 <= first <= 0.2 and 0.2 <= second <= 0.4  # doubling, "equal jitter" (half to full)


def test_retry_after_is_honoured_and_a_long_one_is_not_waited_for() -> None:
    clock = Clock()
    attempt, _ = failing(unavailable("1.5"))
    assert run(caller(clock).call(attempt, deadline=60)) == "ok"
    assert clock.slept == [1.5]
    attempt, calls = failing(unavailable("120"))
    with pytest.raises(UpstreamUnavailable):
        run(caller(clock).call(attempt, deadline=1000))
    assert calls[0] == 1


def test_no_retry_past_the_deadline_or_on_a_client_error() -> None:
    clock = Clock()
    attempt, calls = failing(unavailable("2"))
    with pytest.raises(UpstreamUnavailable):
        run(caller(clock).call(attempt, deadline=1.0))
    assert calls[0] == 1
    attempt, calls = failing(UpstreamBadResponse("remote", "answered 404", status=404))
    with pytest.raises(UpstreamBadResponse):
        run(caller(clock).call(attempt, deadline=60))
    assert calls[0] == 1


def test_the_breaker_opens_after_n_failures_and_one_half_open_probe_closes_it() -> None:
    clock = Clock()
    resilient = caller(clock, attempts=0, failures=3)
    for _ in range(3):
        attempt, _ = failing(unavailable())
        with pytest.raises(UpstreamUnavailable):
            run(resilient.call(attempt, deadline=60))
    assert resilient.breaker_state == "open"
    attempt, calls = failing()
    with pytest.raises(BreakerOpen) as caught:
        run(resilient.call(attempt, deadline=60))
    assert calls[0] == 0 and isinstance(caught.value, RouterError) and caught.value.code == "breaker_open"

    clock.now += 10.0  # reset_s later: one probe goes through; it fails, so the breaker opens again
    attempt, calls = failing(unavailable())
    with pytest.raises(UpstreamUnavailable):
        run(resilient.call(attempt, deadline=60))
    assert calls[0] == 1 and resilient.breaker_state == "open"

    clock.now += 10.0  # the next probe succeeds: closed
    attempt, calls = failing()
    assert run(resilient.call(attempt, deadline=60)) == "ok"
    assert resilient.breaker_state == "closed"


def test_the_concurrency_limit_holds_slots_until_released() -> None:
    from router.dispatch.resilience import Busy

    async def scenario() -> None:
        limited = ResilientCaller("remote", None, None, 1)
        loop = asyncio.get_running_loop()
        await limited.acquire(deadline=loop.time() + 1)
        with pytest.raises(Busy):  # the one slot is taken: a second request waits until its deadline, then gives up
            await limited.acquire(deadline=time.monotonic() + 0.05)
        limited.release()
        await limited.acquire(deadline=time.monotonic() + 0.05)
        assert limited.stats.rejected_busy == 1

    run(scenario())
