"""Queue-aware routing end to end: a real worker with a real queue (batch of one, long generations), real routers
polling its telemetry, and a remote stand-in. A request that would wait too long in the queue goes to the next
tier; without a limit, or with nowhere else to go, it waits on the worker."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.helpers import RouterFactory, WorkerFactory
from tests.router.ops.test_metrics import scrape, value
from tests.servers import ServerThread
from tests.workers.test_telemetry import wait_for
from tests.workers.test_vram_routing import LONG, memory, report, routed_config

MAX_WAIT_S = 0.01
"""Any queue at all predicts more than this (two answers of at least a token at CPU step times); the point is the
spill-over, not where the line is."""


def hold(worker: ServerThread, stop: threading.Event) -> None:
    """A long generation straight to the worker, read until `stop` (closing it cancels it there). Two of them and
    the short requests fit the worker's KV budget of one 4,096-token row, so only the batch size makes them wait;
    each is long enough to outlast the test by far on a fast CPU."""
    body = {"model": "small", "messages": LONG, "max_tokens": 1900, "ignore_eos": True, "stream": True}
    with (
        httpx.Client(timeout=300) as client,
        client.stream("POST", f"{worker.url}/v1/chat/completions", json=body) as response,
    ):
        for _ in response.iter_lines():
            if stop.is_set():
                return


@contextmanager
def busy(worker: ServerThread, generations: int) -> Iterator[threading.Event]:
    """`generations` long ones on the worker: with a batch of one, one runs and the rest queue."""
    stop = threading.Event()
    threads = [threading.Thread(target=hold, args=(worker, stop), daemon=True) for _ in range(generations)]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)


def sees_queue(router: ServerThread, depth: int) -> bool:
    """The router's view of the worker: this queue, and a measured decode step to predict from."""
    workers = report(router)["workers"]["small"]
    return any(w["fresh"] and w["queue_depth"] == depth and w["step_seconds"] for w in workers)


def ask(router: ServerThread, results: dict[str, httpx.Response]) -> threading.Thread:
    body = {"model": "small", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}

    def send() -> None:
        results[router.url] = httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=300)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_a_long_queue_spills_to_the_remote_and_without_a_limit_requests_wait_on_the_worker(
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    standins: dict[str, ServerThread],
    unused_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="router.access")
    worker = start_worker("small", max_batch_size=1, max_seq_len=4096, max_tokens_cap=1900, queue_size=8)
    small, remote = f"{worker.url}/v1", f"{standins['remote'].url}/v1"
    spilling = start_router(routed_config(small, remote, max_queue_wait_s=MAX_WAIT_S))
    patient = start_router(routed_config(small, remote))  # no limit: the default
    stranded = start_router(routed_config(small, unused_url, max_queue_wait_s=MAX_WAIT_S))  # its remote is down

    with busy(worker, 2) as stop:
        wait_for(lambda: memory(worker)["running"] == 1 and memory(worker)["queue_depth"] == 1)
        wait_for(lambda: sees_queue(spilling, 1))

        spilled = httpx.post(
            f"{spilling.url}/v1/chat/completions",
            json={"model": "small", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4},
            timeout=60,
        )
        assert spilled.status_code == 200, spilled.text
        assert spilled.headers["x-router-tier"] == "remote"
        assert spilled.headers["x-router-fallback"] == "small->remote"
        assert spilled.headers["x-router-fallback-reason"] == "preflight:queue_wait"
        counters = report(spilling)["counters"]
        assert counters["refused"] == [{"reason": "queue_wait", "tier": "small", "value": 1}]
        assert "upstream_failures" not in counters, "the worker was not tried"
        samples = scrape(spilling.url)
        assert value(samples, "tiered_router_refused_total", tier="small", reason="queue_wait") == 1
        assert value(samples, "tiered_router_fallback_total", reason="preflight:queue_wait") == 1
        logged = [r for r in caplog.records if r.name == "router.access" and getattr(r, "fallback", None)]
        assert [(r.fallback, r.reason) for r in logged] == [("small->remote", "preflight:queue_wait")]  # type: ignore[attr-defined]

        # Without a limit the request joins the worker's queue; with the remote down, the skipped worker is
        # come back to and waited on. Both are queued behind the running generation and the queued one.
        results: dict[str, httpx.Response] = {}
        wait_for(lambda: sees_queue(stranded, 1))
        waiting = [ask(patient, results), ask(stranded, results)]
        wait_for(lambda: memory(worker)["queue_depth"] == 3)
        assert not results, "they wait on the worker"
        stop.set()  # the long generations end; the queue drains
        for thread in waiting:
            thread.join(timeout=300)

    for router in (patient, stranded):
        answer = results[router.url]
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-router-tier"] == "small"
        assert "x-router-fallback" not in answer.headers
    assert "refused" not in report(patient)["counters"]
    stranded_counters = report(stranded)["counters"]
    assert stranded_counters["refused"] == [{"reason": "queue_wait", "tier": "small", "value": 1}]
    assert [f["tier"] for f in stranded_counters["upstream_failures"]] == ["remote"]
    # The local share follows: the spilled request was served remotely, the others locally.
    assert httpx.get(f"{spilling.url}/status.json").json()["served"] == {"local": 0, "remote": 1, "local_share": 0.0}
    assert value(scrape(stranded.url), "tiered_router_local_share") == 1.0


def test_the_worker_publishes_what_a_wait_is_predicted_from(start_worker: WorkerFactory) -> None:
    worker = start_worker("small", max_batch_size=2)
    before = memory(worker)
    assert before["max_batch_size"] == 2 and before["queued_prompt_tokens"] == 0
    assert before["step_seconds"] is None and before["prefill_tokens_per_second"] is None  # nothing measured yet
    body: dict[str, Any] = {"model": "small", "messages": LONG, "max_tokens": 12, "ignore_eos": True}
    assert httpx.post(f"{worker.url}/v1/chat/completions", json=body, timeout=120).status_code == 200
    after = memory(worker)
    assert after["step_seconds"] > 0 and after["prefill_tokens_per_second"] > 0
    assert after["prefill_overhead_seconds"] >= 0 and after["prefill_tokens_per_forward"] == 512  # prefill_chunk
    assert after["mean_completion_tokens"] == 12
    metrics = httpx.get(f"{worker.url}/metrics").text
    for name in (
        "tiered_worker_decode_step_seconds",
        "tiered_worker_prefill_tokens_per_second",
        "tiered_worker_prefill_overhead_seconds",
    ):
        assert f'{name}{{tier="small"}}' in metrics
    assert 'tiered_worker_max_batch_size{tier="small"} 2.0' in metrics
