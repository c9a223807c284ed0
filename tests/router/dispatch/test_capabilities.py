"""Nothing is silently ignored: a request goes to a tier of its chain that supports what it needs, or gets a 400.

Real routers on loopback in front of stand-ins that record what they receive. The worker tiers (`small`, `large`)
are made to declare no capabilities, the remote one all of them; the shipped ones (all six) last.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import RouterFactory, router_yaml, serve_standins
from tests.servers import ServerThread

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture
def upstreams() -> Iterator[dict[str, ServerThread]]:
    """Fresh stand-ins per test: what each received is the test's own."""
    with serve_standins() as servers:
        yield servers


def config(upstreams: dict[str, ServerThread]) -> dict[str, Any]:
    raw = router_yaml(*(f"{upstreams[t].url}/v1" for t in ("small", "large", "remote")))
    for tier in raw["tiers"].values():
        tier["guardrails"] = False
    for worker in ("small", "large"):
        raw["tiers"][worker]["capabilities"] = []
    return raw


def received(server: ServerThread) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = httpx.get(f"{server.url}/_standin/requests").json()
    return records


def chat(router: ServerThread, **body: Any) -> httpx.Response:
    return httpx.post(f"{router.url}/v1/chat/completions", json={"messages": QUESTION, **body}, timeout=30)


def test_a_request_with_tools_skips_the_worker_tiers_for_the_remote(
    start_router: RouterFactory, upstreams: dict[str, ServerThread]
) -> None:
    router = start_router(config(upstreams))
    response = chat(router, model="small", tools=TOOLS, tool_choice="required")
    assert response.status_code == 200, response.text
    assert response.headers["x-router-tier"] == "remote"
    assert response.headers["x-router-fallback"] == "small->remote"
    assert response.headers["x-router-fallback-reason"] == "capability:tools"
    assert received(upstreams["small"]) == [] and received(upstreams["large"]) == []
    forwarded = received(upstreams["remote"])[0]["body"]
    assert forwarded["tools"] == TOOLS and forwarded["tool_choice"] == "required"

    refused = httpx.get(f"{router.url}/ready").json()["counters"]["refused"]
    assert {"tier": "small", "reason": "capability:tools", "value": 1} in refused
    assert {"tier": "large", "reason": "capability:tools", "value": 1} in refused


def test_a_plain_request_still_goes_to_the_worker(
    start_router: RouterFactory, upstreams: dict[str, ServerThread]
) -> None:
    router = start_router(config(upstreams))
    response = chat(router, model="small", temperature=0.2, presence_penalty=0.0, tool_choice="auto")
    assert response.status_code == 200, response.text
    assert response.headers["x-router-tier"] == "small" and "x-router-fallback" not in response.headers
    assert len(received(upstreams["small"])) == 1 and received(upstreams["remote"]) == []


def test_a_worker_tier_that_declares_a_capability_takes_such_requests(
    start_router: RouterFactory, upstreams: dict[str, ServerThread]
) -> None:
    raw = config(upstreams)
    raw["tiers"]["small"]["capabilities"] = ["response_format"]
    raw["tiers"]["large"]["capabilities"] = []
    router = start_router(raw)
    response = chat(router, model="small", response_format={"type": "json_object"})
    assert response.status_code == 200 and response.headers["x-router-tier"] == "small"
    penalised = chat(router, model="small", response_format={"type": "json_object"}, frequency_penalty=0.5)
    assert penalised.headers["x-router-fallback-reason"] == "capability:penalties"


@pytest.mark.parametrize("stream", [False, True])
def test_no_capable_tier_in_the_chain_is_a_400_naming_the_parameter_before_any_upstream_call(
    start_router: RouterFactory, upstreams: dict[str, ServerThread], stream: bool
) -> None:
    raw = config(upstreams)
    raw["tiers"]["small"]["fallback"] = ["large"]
    router = start_router(raw)
    response = chat(router, model="small", tools=TOOLS, stream=stream)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "tools"
    assert error["code"] == "unsupported_parameter"
    assert "tier 'small' lacks tools; tier 'large' lacks tools" in error["message"]
    assert all(received(server) == [] for server in upstreams.values())

    # The decision endpoint says the same, and a remote that declares less is no way out either.
    route = httpx.post(f"{router.url}/v1/route", json={"model": "small", "messages": QUESTION, "tools": TOOLS})
    assert route.status_code == 400 and route.json()["error"]["param"] == "tools"
    raw["tiers"]["small"]["fallback"] = ["remote"]
    raw["tiers"]["remote"]["capabilities"] = ["response_format"]
    limited = start_router(raw)
    tools = chat(limited, model="small", tools=TOOLS, logprobs=True)
    assert tools.status_code == 400 and tools.json()["error"]["param"] == "tools"
    assert "tier 'remote' lacks tools" in tools.json()["error"]["message"]
    assert all(received(server) == [] for server in upstreams.values())


def test_the_shipped_worker_tiers_take_every_capability(
    start_router: RouterFactory, upstreams: dict[str, ServerThread]
) -> None:
    raw = router_yaml(*(f"{upstreams[t].url}/v1" for t in ("small", "large", "remote")))
    for tier in raw["tiers"].values():
        tier["guardrails"] = False
    router = start_router(raw)
    for extra in (
        {"tools": TOOLS, "tool_choice": "required"},
        {"response_format": {"type": "json_object"}},
        {"tools": TOOLS, "logprobs": True, "top_logprobs": 2, "presence_penalty": 0.5, "logit_bias": {"7": 5}},
    ):
        response = chat(router, model="small", **extra)
        assert response.status_code == 200 and response.headers["x-router-tier"] == "small", response.text
        assert "x-router-fallback" not in response.headers
