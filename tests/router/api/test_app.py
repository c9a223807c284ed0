"""The router end to end: real uvicorn servers on loopback, the official openai SDK, stand-in upstreams."""

from __future__ import annotations

import asyncio
import threading

import httpx
import openai
import pytest

from router.devtools.standin import Standin, StandinSettings
from tests.helpers import RouterFactory, router_yaml
from tests.servers import ServerThread

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PROOF = [
    {
        "role": "user",
        "content": "Prove that there are infinitely many primes. Explain each step of the proof rigorously.",
    }
]


def test_openai_sdk_sync_completion_and_stream(start_router: RouterFactory) -> None:
    router = start_router()
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=FRANCE, max_tokens=16)
    completion = raw.parse()
    assert raw.headers["x-router-tier"] == "small"
    assert raw.headers["x-router-rule"] == "simple"
    assert 0.0 <= float(raw.headers["x-router-score"]) < 0.5
    assert completion.choices[0].message.content == "[small] What is the capital of France?"
    assert completion.usage is not None and completion.usage.completion_tokens == 7

    with client.chat.completions.with_streaming_response.create(
        model="auto", messages=PROOF, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["x-router-tier"] == "large"
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[large] Prove that there are infinitely many primes.")
    assert chunks[-1].usage is not None


def test_openai_sdk_async(start_router: RouterFactory) -> None:
    router = start_router()

    async def main() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=PROOF)
        stream = await client.chat.completions.create(model="auto", messages=FRANCE, stream=True)
        words = [c.choices[0].delta.content or "" async for c in stream]
        await client.close()
        return raw.headers["x-router-tier"], "".join(words)

    tier, streamed = asyncio.run(main())
    assert tier == "large"
    assert streamed == "[small] What is the capital of France?"


def test_parameters_pass_through_and_model_is_rewritten(
    start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    raw = router_yaml(*(f"{standins[t].url}/v1" for t in ("small", "large", "remote")))
    router = start_router(raw)
    body = {
        "model": "auto",
        "messages": FRANCE,
        "max_completion_tokens": 5,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["\n"],
        "seed": 7,
        "n": 1,
        "user": "u-1",
        "logit_bias": {"50256": -100},
    }
    response = httpx.post(f"{router.url}/v1/chat/completions", json=body, headers={"authorization": "Bearer client"})
    assert response.status_code == 200
    received = httpx.get(f"{standins['small'].url}/_standin/requests").json()[-1]
    forwarded = received["body"]
    assert forwarded["model"] == "small"
    for key in ("max_completion_tokens", "temperature", "top_p", "stop", "seed", "n", "user", "logit_bias"):
        assert forwarded[key] == body[key], key
    assert "authorization" not in received["headers"], "the client's credentials must not reach a worker"


def test_remote_key_sent_upstream_never_echoed(start_router: RouterFactory, standins: dict[str, ServerThread]) -> None:
    router = start_router()
    ok = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "remote", "messages": FRANCE})
    assert ok.status_code == 200 and ok.headers["x-router-tier"] == "remote"
    received = httpx.get(f"{standins['remote'].url}/_standin/requests").json()[-1]
    assert received["headers"]["authorization"] == "Bearer sk-test-secret-key"

    keyless = start_router(environ={})
    missing = httpx.post(f"{keyless.url}/v1/chat/completions", json={"model": "remote", "messages": FRANCE})
    assert missing.status_code == 503
    assert "TEST_REMOTE_KEY" in missing.json()["error"]["message"]
    ready = httpx.get(f"{keyless.url}/ready").json()
    assert ready["tiers"]["remote"]["ready"] is False
    for response in (ok, missing):
        assert "sk-test-secret-key" not in response.text


def test_route_endpoint_explains_without_generating(
    start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    router = start_router()
    before = len(httpx.get(f"{standins['large'].url}/_standin/requests").json())
    response = httpx.post(f"{router.url}/v1/route", json={"model": "auto", "messages": PROOF})
    assert response.status_code == 200
    decision = response.json()
    assert set(decision) == {"tier", "score", "rule", "reasons", "guardrails", "fallback", "prompt_tokens"}
    assert decision["tier"] == "large" and decision["rule"] == "complex"
    assert decision["guardrails"] is True and decision["fallback"] == ["remote"]
    # The default (static) classifier names itself and what moved its score, reasoning cues among them here.
    assert any(r.startswith("static:") for r in decision["reasons"])
    assert any(r.startswith("reasoning:") for r in decision["reasons"])
    assert response.headers["x-router-tier"] == "large"
    assert len(httpx.get(f"{standins['large'].url}/_standin/requests").json()) == before


def test_models_health_ready(start_router: RouterFactory) -> None:
    router = start_router()
    models = httpx.get(f"{router.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["auto", "small", "large", "remote"]
    assert httpx.get(f"{router.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{router.url}/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert all(t["ready"] for t in body["tiers"].values())
    assert body["state"]["backend"] == "memory"


def test_rules_override_the_classifier_over_http(start_router: RouterFactory) -> None:
    router = start_router()
    forced = httpx.post(f"{router.url}/v1/chat/completions", json={"messages": PROOF}, headers={"x-tier": "small"})
    assert forced.headers["x-router-tier"] == "small" and forced.headers["x-router-rule"] == "header-override"
    long_prompt = [{"role": "user", "content": "hello " * 8000}]
    routed = httpx.post(f"{router.url}/v1/route", json={"messages": long_prompt}).json()
    assert routed["tier"] == "large" and routed["rule"] == "long-context"


def test_first_chunk_arrives_before_upstream_finishes(start_router: RouterFactory) -> None:
    gate = threading.Event()
    held = Standin(StandinSettings(name="held", hold_after_first=gate))
    with ServerThread(held) as upstream:
        url = f"{upstream.url}/v1"
        router = start_router(router_yaml(url, url, url))
        body = {"model": "small", "messages": FRANCE, "stream": True}
        with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body, timeout=10) as response:
            lines = response.iter_lines()
            seen = []
            for line in lines:
                seen.append(line)
                if '"[held]"' in line:
                    break
            # The upstream is paused until the gate opens: this chunk came through while it was still running.
            assert not gate.is_set()
            gate.set()
            rest = list(lines)
    assert [line for line in rest if line][-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"", 400, None),
        (b"[]", 400, None),
        (b'{"messages": "hello"}', 400, "messages"),
        (b'{"messages": []}', 400, "messages"),
        (b'{"model": "auto"}', 400, None),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages[0].role"),
        (b'{"messages": [{"role": "user", "content": 42}]}', 400, "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, "temperature"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400, "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "n": 5}', 400, "n"),
        (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
        (b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-9"}', 404, "model"),
        # Numbers no upstream can take, also in the fields passed through verbatim (issue 17 point 6).
        (b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"9" * 40 + b"}", 400, "seed"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}', 400, "temperature"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 1e999}}', 400, "logit_bias"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "metadata": {"a": ' + b"9" * 5000 + b"}}",
            400,
            "metadata",
        ),
        (
            b'{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": ' + b"1" * 30 + b"}]}]}",
            400,
            "messages[0].tool_calls",
        ),
    ],
)
def test_bad_input_gets_openai_style_4xx(
    start_router: RouterFactory, content: bytes, status: int, param: str | None
) -> None:
    router = start_router()
    for path in ("/v1/chat/completions", "/v1/route"):
        response = httpx.post(f"{router.url}{path}", content=content, headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"]
        assert error["param"] == param


def test_oversized_body_gets_413(start_router: RouterFactory) -> None:
    router = start_router()
    body = b'{"messages": [{"role": "user", "content": "' + b"a" * (10 * 1024 * 1024) + b'"}]}'
    headers = {"content-type": "application/json"}
    response = httpx.post(f"{router.url}/v1/chat/completions", content=body, headers=headers, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nope"),
        ("POST", "/v1/moderations"),
        ("POST", "/v1/images/generations"),
        ("GET", "/v1/responses/resp_1"),
        ("POST", "/v2/chat/completions"),
    ],
)
def test_an_unknown_path_is_a_404_naming_it_and_what_is_served(
    start_router: RouterFactory, method: str, path: str
) -> None:
    router = start_router()
    missing = httpx.request(method, f"{router.url}{path}", json={"model": "auto", "input": "hi"})
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == "unknown_url"
    assert error["message"].startswith(f"Invalid URL ({method} {path})")
    served_here = ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings", "GET /v1/models")
    for served in (*served_here, "POST /v1/responses", "GET /v1/models/{model}", "POST /v1/route"):
        assert served in error["message"], error["message"]


def test_a_wrong_method_is_a_405_naming_the_allowed_ones(start_router: RouterFactory) -> None:
    router = start_router()
    wrong = httpx.get(f"{router.url}/v1/chat/completions")
    assert wrong.status_code == 405
    assert "POST" in wrong.headers["allow"]
    error = wrong.json()["error"]
    assert error["code"] == "method_not_allowed" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("GET is not allowed on /v1/chat/completions; allowed:")
    assert "POST" in error["message"]


ORIGIN = "https://chat.example.com"


def preflight(router: ServerThread, origin: str) -> httpx.Response:
    headers = {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    return httpx.options(f"{router.url}/v1/chat/completions", headers=headers)


def test_cors_lets_configured_origins_call_the_api(start_router: RouterFactory) -> None:
    router = start_router(server={"port": 0, "cors_origins": [ORIGIN]})
    allowed = preflight(router, ORIGIN)
    assert allowed.status_code in (200, 204), allowed.text
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    refused = preflight(router, "https://evil.example.net")
    assert refused.headers.get("access-control-allow-origin") != "https://evil.example.net"

    answer = httpx.post(f"{router.url}/v1/chat/completions", json={"messages": FRANCE}, headers={"origin": ORIGIN})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    exposed = answer.headers["access-control-expose-headers"].lower()
    assert "x-router-tier" in exposed and "x-request-id" in exposed


def test_without_cors_origins_there_are_no_cors_headers(start_router: RouterFactory) -> None:
    router = start_router()
    answer = httpx.post(f"{router.url}/v1/chat/completions", json={"messages": FRANCE}, headers={"origin": ORIGIN})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in preflight(router, ORIGIN).headers


def test_forced_tier_can_be_forbidden(start_router: RouterFactory) -> None:
    router = start_router(routing={"allow_forced_tier": False})
    response = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "large", "messages": FRANCE})
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert httpx.post(f"{router.url}/v1/chat/completions", json={"messages": FRANCE}).status_code == 200


def test_upstream_failures_name_the_tier(start_router: RouterFactory, unused_url: str) -> None:
    failing = ServerThread(Standin(StandinSettings(name="failing", fail_status=500)))
    slow = ServerThread(Standin(StandinSettings(name="slow", response_delay_s=3.0)))
    rejecting = ServerThread(Standin(StandinSettings(name="rejecting", fail_status=400)))
    with failing, slow, rejecting:
        raw = router_yaml(f"{failing.url}/v1", unused_url, f"{rejecting.url}/v1")
        for tier in ("small", "large"):
            raw["tiers"][tier]["fallback"] = []  # each failure must reach the client here
        raw["tiers"]["slow"] = {
            "base_url": f"{slow.url}/v1",
            "model": "slow",
            "timeouts": {"total": 0.3, "first_byte": 0.3},
        }
        router = start_router(raw)
        cases = {"small": 502, "large": 503, "slow": 504}
        for tier, status in cases.items():
            for stream in (False, True):
                body = {"model": tier, "messages": FRANCE, "stream": stream}
                response = httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=10)
                assert response.status_code == status, (tier, stream, response.text)
                error = response.json()["error"]
                assert f"tier '{tier}'" in error["message"]
                assert response.headers["x-router-tier"] == tier
        relayed = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "remote", "messages": FRANCE})
        assert relayed.status_code == 400 and "stand-in failing" in relayed.json()["error"]["message"]


def test_embedding_classifier_routes_end_to_end(start_router: RouterFactory, standins: dict[str, ServerThread]) -> None:
    urls = [f"{standins[t].url}/v1" for t in ("small", "large", "remote")]
    router = start_router(router_yaml(*urls, classifier={"kind": "embedding", "threshold": 0.5}))
    simple = httpx.post(f"{router.url}/v1/route", json={"messages": FRANCE}, timeout=30).json()
    complex_ = httpx.post(f"{router.url}/v1/route", json={"messages": PROOF}, timeout=30).json()
    assert (simple["tier"], complex_["tier"]) == ("small", "large")
    assert any(r.startswith("embedding:") for r in complex_["reasons"])
    assert httpx.get(f"{router.url}/ready").json()["classifier"] == "embedding"
