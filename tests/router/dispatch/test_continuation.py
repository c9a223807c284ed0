"""Mid-stream continuation with the request's extras: `tools` and `logprobs` go along to the tier that continues
(through a real router and stand-ins), and a stream that cannot be continued (tool calls already sent, several
choices) ends with an error event saying why."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from router.dispatch.continuation import ContinuingStream
from router.dispatch.outcome import Route
from router.wire.errors import UpstreamUnavailable
from router.wire.protocol import ChatCompletionRequest, decode_chat_request
from router.wire.sse import frame, relay
from tests.helpers import RouterFactory, router_yaml, serve_standins
from tests.servers import ServerThread
from tests.shapes import WEATHER

QUESTION = [{"role": "user", "content": "one two three four five six seven eight nine ten"}]


@pytest.fixture
def upstreams() -> Iterator[dict[str, ServerThread]]:
    with serve_standins() as servers:
        yield servers


def test_tools_and_logprobs_go_along_to_the_tier_that_continues(
    start_router: RouterFactory, upstreams: dict[str, ServerThread]
) -> None:
    raw = router_yaml(*(f"{upstreams[t].url}/v1" for t in ("small", "large", "remote")))
    for tier in ("large", "remote"):
        raw["tiers"][tier]["guardrails"] = False
    router = start_router(raw)
    upstreams["large"].server.config.app.settings.script.append("die:3")
    extras = {"tools": [WEATHER], "tool_choice": "auto", "logprobs": True, "top_logprobs": 2}
    body = {"model": "large", "messages": QUESTION, "stream": True, "max_tokens": 40, **extras}
    text = httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=30).text
    assert ": x-router-fallback large->remote (connection_lost), mid-stream" in text
    assert text.rstrip().endswith("data: [DONE]") and '"error"' not in text
    continued = httpx.get(f"{upstreams['remote'].url}/_standin/requests").json()[-1]["body"]
    assert {key: continued[key] for key in extras} == extras
    assert continued["messages"][-1] == {"role": "assistant", "content": "[large] one two"}


class BrokenStream:
    """A tier's stream that sends `events` and then breaks off."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    async def chunks(self) -> AsyncIterator[bytes]:
        for event in self.events:
            yield frame(msgspec.json.encode(event))
        raise UpstreamUnavailable("small", "the connection broke (ReadError)", reason="connection_lost")

    async def aclose(self) -> None:
        pass


def chunk(index: int, **delta: Any) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "finish_reason": None}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "small", "choices": [choice]}


CALL_HEAD = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}


@pytest.mark.parametrize(
    ("events", "why"),
    [
        ([chunk(0, role="assistant", content=""), chunk(0, tool_calls=[CALL_HEAD])], "the stream carries tool calls"),
        (
            [chunk(0, role="assistant", content="Hi"), chunk(1, role="assistant", content="Yo")],
            "the stream has several choices",
        ),
    ],
)
def test_a_stream_that_cannot_be_continued_says_why(events: list[dict[str, Any]], why: str) -> None:
    request: ChatCompletionRequest = decode_chat_request(msgspec.json.encode({"messages": QUESTION, "stream": True}))
    reopened: list[list[str]] = []

    async def reopen(_: ChatCompletionRequest, rest: list[str]) -> Any:
        reopened.append(rest)
        raise AssertionError("not continued")

    stream = ContinuingStream(
        request,
        BrokenStream(events),
        Route("small"),
        ["large"],
        reopen,
        "continue",
        lambda *_: None,  # type: ignore[arg-type]
    )

    async def collect() -> list[bytes]:
        return [piece async for piece in relay(stream.chunks())]

    frames = anyio.run(collect)
    assert frames[-1] == b"data: [DONE]\n\n" and reopened == []
    error = msgspec.json.decode(frames[-2].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_unavailable"
    assert error["message"].endswith(f"the stream broke off mid-way and was not continued: {why}"), error
