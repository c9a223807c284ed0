"""Smoke test with the real `openai` SDK, sync and async clients, against a router on loopback (stand-in tiers):
a completion parsed into the SDK's models, a stream, raw-response headers, the model endpoints, and a 404 for
an endpoint the router does not serve."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.helpers import RouterFactory

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "[small] What is the capital of France?"


def test_the_sync_client(start_router: RouterFactory) -> None:
    router = start_router()
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)

    completion = client.chat.completions.create(model="small", messages=FRANCE)  # type: ignore[arg-type]
    message = completion.choices[0].message
    assert (message.role, message.content, message.refusal) == ("assistant", ANSWER, None)
    assert completion.object == "chat.completion" and completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0

    stream = client.chat.completions.create(
        model="small",
        messages=FRANCE,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage is not None

    raw = client.chat.completions.with_raw_response.create(model="auto", messages=FRANCE)  # type: ignore[arg-type]
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"
    assert (raw.headers["x-router-tier"], raw.headers["x-router-rule"]) == ("small", "simple")
    assert raw.headers["x-request-id"]
    assert raw.parse().choices[0].message.content == ANSWER

    assert [m.id for m in client.models.list()] == ["auto", "small", "large", "remote"]
    assert client.models.retrieve("large").id == "large"
    with pytest.raises(openai.NotFoundError) as unknown_model:
        client.models.retrieve("gpt-9")
    assert unknown_model.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as unknown_endpoint:
        client.moderations.create(input="hi")
    assert "POST /v1/chat/completions" in unknown_endpoint.value.message


def test_the_async_client(start_router: RouterFactory) -> None:
    router = start_router()

    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0) as client:
            completion = await client.chat.completions.create(model="small", messages=FRANCE)  # type: ignore[arg-type]
            assert completion.choices[0].message.role == "assistant"
            assert completion.choices[0].message.content == ANSWER

            stream = await client.chat.completions.create(model="small", messages=FRANCE, stream=True)  # type: ignore[arg-type]
            words = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            assert "".join(words) == ANSWER

            raw = await client.chat.completions.with_raw_response.create(model="auto", messages=FRANCE)  # type: ignore[arg-type]
            assert raw.headers["x-router-tier"] == "small"
            assert raw.parse().choices[0].message.content == ANSWER
            assert (await client.models.retrieve("small")).id == "small"

    asyncio.run(main())
