"""Context length end to end: a real worker (SmolLM2 on the CPU, a 256-token window), a remote stand-in, a real router.

A prompt too long for a tier goes to the next tier of its chain that fits, never a 400 while one could take it:
pre-flight skips the worker from its reported window, and without pre-flight the worker's own 400
`context_length_exceeded` moves the request on. Too long for every tier: OpenAI's 400 `context_length_exceeded`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from router.devtools.standin import Standin, StandinSettings
from tests.helpers import RouterFactory, WorkerFactory, router_yaml
from tests.servers import ServerThread

WINDOW = 256


@pytest.fixture
def remote() -> Iterator[ServerThread]:
    with ServerThread(Standin(StandinSettings(name="remote"))) as server:
        yield server


@pytest.fixture
def worker(start_worker: WorkerFactory) -> ServerThread:
    return start_worker("small", max_seq_len=WINDOW, max_tokens_cap=128)


def routed(worker: ServerThread, remote: ServerThread, *, remote_window: int = 128_000, **routing: Any) -> Any:
    raw = router_yaml(f"{worker.url}/v1", "http://127.0.0.1:1/v1", f"{remote.url}/v1")
    raw["tiers"]["small"]["fallback"] = ["remote"]
    raw["tiers"]["remote"]["context_window"] = remote_window
    for tier in raw["tiers"].values():
        tier["guardrails"] = False
    raw["routing"] = {**raw.get("routing", {}), **routing}
    raw["discovery"] = {"interval_s": 0.1, "stale_after_s": 1.0}
    return raw


def prompt(i: int, words: int = 600) -> list[dict[str, str]]:
    """About 800 tokens by the router's estimate, more than 256 by any tokenizer."""
    text = " ".join(f"lighthouse{i}-{n}" if n % 50 == 0 else "keeper" for n in range(words))
    return [{"role": "user", "content": f"Summarise this: {text}"}]


def received(server: ServerThread) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = httpx.get(f"{server.url}/_standin/requests").json()
    return records


def telemetry_known(router: ServerThread, timeout_s: float = 30.0) -> None:
    """Wait (not assert on time) until the router's discovery has read the worker's /v1/memory."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = httpx.get(f"{router.url}/ready").json()["workers"].get("small", [])
        if any(w["source"] == "poll" and w["fresh"] for w in workers):
            return
        time.sleep(0.05)
    raise TimeoutError("the router never read the worker's telemetry")


def post(router: ServerThread, messages: list[dict[str, str]], **extra: Any) -> httpx.Response:
    body = {"model": "small", "messages": messages, "max_tokens": 8, **extra}
    return httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=60)


def test_48_prompts_too_long_for_the_worker_are_all_served_by_the_remote(
    worker: ServerThread, remote: ServerThread, start_router: RouterFactory
) -> None:
    assert httpx.get(f"{worker.url}/v1/memory").json()["max_seq_len"] == WINDOW
    router = start_router(routed(worker, remote))
    telemetry_known(router)
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: post(router, prompt(i), stream=i % 2 == 1), range(48)))

    assert [r.status_code for r in responses] == [200] * 48, [r.text for r in responses if r.status_code != 200]
    assert {r.headers["x-router-tier"] for r in responses} == {"remote"}
    assert {r.headers["x-router-fallback-reason"] for r in responses} == {"preflight:context_length"}
    assert len(received(remote)) == 48
    counters = httpx.get(f"{router.url}/ready").json()["counters"]
    assert counters["refused"] == [{"reason": "context_length", "tier": "small", "value": 48}]
    assert "upstream_failures" not in counters, "the worker was never asked"

    short = post(router, [{"role": "user", "content": "Say hi."}], max_tokens=4)
    assert short.status_code == 200 and short.headers["x-router-tier"] == "small"


def test_without_preflight_the_workers_own_context_refusal_moves_the_request_on(
    worker: ServerThread, remote: ServerThread, start_router: RouterFactory
) -> None:
    router = start_router(routed(worker, remote, preflight=False))
    for stream in (False, True):
        response = post(router, prompt(0), stream=stream)
        assert response.status_code == 200, response.text
        assert response.headers["x-router-fallback"] == "small->remote"
        assert response.headers["x-router-fallback-reason"] == "context_length"
    counters = httpx.get(f"{router.url}/ready").json()["counters"]
    assert counters["upstream_failures"] == [{"reason": "context_length", "tier": "small", "value": 2}]

    # The worker's own answer, as the router saw it.
    direct = httpx.post(f"{worker.url}/v1/chat/completions", json={"model": "small", "messages": prompt(0)})
    assert direct.status_code == 400 and direct.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("preflight", [True, False])
def test_a_prompt_too_long_for_every_tier_is_openais_400(
    worker: ServerThread, remote: ServerThread, start_router: RouterFactory, preflight: bool
) -> None:
    router = start_router(routed(worker, remote, remote_window=500, preflight=preflight))
    if preflight:
        telemetry_known(router)
    for stream in (False, True):
        response = post(router, prompt(1), stream=stream)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
        assert error["param"] == "messages"
        assert "context window of every tier" in error["message"] and "of 500" in error["message"]
    assert received(remote) == []
