"""Fallback through real routers on loopback: a flapping remote API, and streams that break off mid-way.

The upstreams are stand-ins with a script (router.devtools.standin): `503`, `429:<retry-after>`, `slow:<s>`,
`die:<words>` (a stream that breaks off, as a crashed worker's does).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest

from tests.helpers import RouterFactory, router_yaml, serve_standins
from tests.servers import ServerThread

QUESTION = [{"role": "user", "content": "one two three four five six seven eight nine ten"}]


@pytest.fixture
def upstreams() -> Iterator[dict[str, ServerThread]]:
    """Fresh stand-ins per test (their scripts and records are the test's own)."""
    with serve_standins() as servers:
        yield servers


def script(server: ServerThread, *steps: str) -> None:
    server.server.config.app.settings.script.extend(steps)


def received(server: ServerThread) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = httpx.get(f"{server.url}/_standin/requests").json()
    return records


def config(upstreams: dict[str, ServerThread], **remote: Any) -> dict[str, Any]:
    raw = router_yaml(*(f"{upstreams[t].url}/v1" for t in ("small", "large", "remote")))
    raw["tiers"]["remote"].update(remote)
    raw["tiers"]["large"]["guardrails"] = False
    raw["tiers"]["remote"]["guardrails"] = False
    return raw


def counters(router: ServerThread) -> dict[str, Any]:
    report: dict[str, Any] = httpx.get(f"{router.url}/ready").json()
    return dict(report["counters"])


def test_a_flapping_remote_is_retried_honouring_retry_after(
    start_router: RouterFactory, upstreams: dict[str, ServerThread]
) -> None:
    router = start_router(config(upstreams, retry={"attempts": 3, "backoff_s": 0.05}))
    script(upstreams["remote"], "503", "429:0.3", "ok")
    response = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "remote", "messages": QUESTION})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith("[remote]")
    seen = received(upstreams["remote"])
    assert len(seen) == 3
    assert seen[2]["at"] - seen[1]["at"] >= 0.3, "the retry waited for Retry-After"
    assert counters(router)["retries"] == [{"tier": "remote", "value": 2}]


def test_a_slow_remote_times_out_and_the_retry_answers(
    start_router: RouterFactory, upstreams: dict[str, ServerThread]
) -> None:
    timeouts = {"connect": 1.0, "first_byte": 0.5, "between_chunks": 0.5, "total": 0.5}
    router = start_router(config(upstreams, retry={"attempts": 1, "backoff_s": 0.05}, timeouts=timeouts))
    script(upstreams["remote"], "slow:3", "ok")
    response = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "remote", "messages": QUESTION})
    assert response.status_code == 200, response.text
    assert len(received(upstreams["remote"])) == 2


def test_the_breaker_opens_on_repeated_failures_and_a_probe_closes_it(
    start_router: RouterFactory, upstreams: dict[str, ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    router = start_router(config(upstreams, retry={"attempts": 0}, breaker={"failures": 3, "reset_s": 0.5}))
    script(upstreams["remote"], "503", "500", "503")
    body = {"model": "remote", "messages": QUESTION}
    for _ in range(3):
        failed = httpx.post(f"{router.url}/v1/chat/completions", json=body)
        assert failed.status_code in (502, 503) and "error" in failed.json()
    assert counters(router)["breaker"] == {"remote": "open"}

    rejected = httpx.post(f"{router.url}/v1/chat/completions", json=body)
    assert rejected.status_code == 503 and rejected.json()["error"]["code"] == "breaker_open"
    assert len(received(upstreams["remote"])) == 3, "an open breaker does not call the remote"

    import time

    time.sleep(0.6)  # reset_s: the next request is the half-open probe; it succeeds and closes the breaker
    probe = httpx.post(f"{router.url}/v1/chat/completions", json=body)
    assert probe.status_code == 200
    assert counters(router)["breaker"] == {"remote": "closed"}
    # The remote's key went upstream on every call, and never into a log line or an error.
    assert all(r["headers"]["authorization"] == "Bearer sk-test-secret-key" for r in received(upstreams["remote"]))
    assert "breaker" in caplog.text and "sk-test-secret-key" not in caplog.text
    assert "sk-test-secret-key" not in failed.text + rejected.text


def stream_text(router: ServerThread, **extra: Any) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(the SSE lines as sent, the comments, the decoded events) of one streamed request to `large`."""
    lines, comments, events = [], [], []
    body = {"model": "large", "messages": QUESTION, "stream": True, **extra}
    with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                continue
            lines.append(line)
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith("data: {"):
                events.append(msgspec.json.decode(line[6:]))
    return lines, comments, events


def content(events: list[dict[str, Any]]) -> str:
    return "".join(choice["delta"].get("content") or "" for event in events for choice in event.get("choices", []))


def test_a_stream_broken_off_mid_way_is_continued_on_the_remote(
    start_router: RouterFactory, upstreams: dict[str, ServerThread]
) -> None:
    router = start_router(config(upstreams))
    script(upstreams["large"], "die:3")
    lines, comments, events = stream_text(router, max_tokens=40)

    assert lines[-1] == "data: [DONE]"
    assert comments == [": x-router-fallback large->remote (connection_lost), mid-stream"]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert len({e["id"] for e in events}) == 1 and {e["model"] for e in events} == {"large"}
    assert sum(1 for e in events if e["choices"] and e["choices"][0]["delta"].get("role")) == 1

    # The remote was asked to continue: the same messages, then what the client already has.
    sent_before_failure = "[large] one two"
    continuation = received(upstreams["remote"])[-1]["body"]
    assert continuation["messages"][:-1] == QUESTION
    assert continuation["messages"][-1] == {"role": "assistant", "content": sent_before_failure}
    assert continuation["max_tokens"] == 40 - 3
    assert content(events) == sent_before_failure + "[remote] one two three four five six seven eight nine ten"
    assert counters(router)["continued"] == [
        {"reason": "connection_lost", "source": "large", "target": "remote", "value": 1}
    ]


def test_the_openai_sdk_reads_a_continued_stream_as_one_answer(
    start_router: RouterFactory, upstreams: dict[str, ServerThread]
) -> None:
    router = start_router(config(upstreams))
    script(upstreams["large"], "die:2")
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="large", messages=QUESTION, stream=True))  # type: ignore[call-overload]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[large] one[remote]") and chunks[-1].choices[0].finish_reason == "stop"


def test_mid_stream_policy_error_ends_the_stream_with_an_error_event(
    start_router: RouterFactory, upstreams: dict[str, ServerThread]
) -> None:
    raw = config(upstreams)
    raw["routing"] = {**raw.get("routing", {}), "mid_stream": "error"}
    router = start_router(raw)
    script(upstreams["large"], "die:3")
    lines, comments, events = stream_text(router)
    assert comments == [] and lines[-1] == "data: [DONE]"
    assert events[-1]["error"]["code"] == "upstream_unavailable"
    assert content(events) == "[large] one two"
    assert len(received(upstreams["remote"])) == 0


def test_a_refusal_before_the_first_byte_falls_back_with_its_reason(
    start_router: RouterFactory, upstreams: dict[str, ServerThread]
) -> None:
    router = start_router(config(upstreams))
    script(upstreams["large"], "503")
    response = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "large", "messages": QUESTION})
    assert response.status_code == 200
    assert response.headers["x-router-fallback"] == "large->remote"
    assert response.headers["x-router-fallback-reason"] == "http_503"
    assert response.json()["choices"][0]["message"]["content"].startswith("[remote]")


def test_a_continuation_asks_workers_to_continue_the_final_message(shipped_config: Any) -> None:
    from router.dispatch.backends import TierBackend, create_client
    from router.dispatch.chain import Dispatcher
    from router.wire.protocol import ChatCompletionRequest, ChatMessage

    client = create_client(4)
    backends = {name: TierBackend(name, tier, client, {}) for name, tier in shipped_config.tiers.items()}
    dispatcher = Dispatcher(shipped_config, backends)
    request = ChatCompletionRequest(
        [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="He")]
    )
    to_worker = msgspec.json.decode(dispatcher.payload(request, "large", continuing=True))
    assert to_worker["continue_final_message"] is True and to_worker["add_generation_prompt"] is False
    to_remote = msgspec.json.decode(dispatcher.payload(request, "remote", continuing=True))
    assert "continue_final_message" not in to_remote  # an OpenAI-style API gets the plain request
    assert "continue_final_message" not in msgspec.json.decode(dispatcher.payload(request, "large"))
