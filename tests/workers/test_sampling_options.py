"""The real worker (SmolLM2-135M-Instruct) serves logprobs, penalties, logit_bias and n, streamed and not, in
OpenAI's schema (tests/openai_schema.py); the router now sends a `logprobs` request to the small worker tier."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests import openai_schema
from tests.helpers import RouterFactory, WorkerFactory, router_yaml
from tests.servers import ServerThread

pytestmark = pytest.mark.slow
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
DEAD = "http://127.0.0.1:1/v1"


def ask(server: ServerThread, **body: Any) -> httpx.Response:
    payload = {"model": "small", "messages": FRANCE, "temperature": 0, "max_tokens": 8, **body}
    return httpx.post(f"{server.url}/v1/chat/completions", json=payload, timeout=120)


def test_logprobs_and_n_through_the_router_and_streamed(
    start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    small = start_worker("small")
    router = start_router(router_yaml(f"{small.url}/v1", DEAD, DEAD))
    extra = {"presence_penalty": 0.3, "frequency_penalty": 0.2, "logit_bias": {"0": -100}}
    response = ask(router, logprobs=True, top_logprobs=3, n=2, **extra)
    assert response.status_code == 200, response.text
    assert response.headers["x-router-tier"] == "small" and "x-router-fallback" not in response.headers
    completion = openai_schema.completion(response.content)
    assert [c.index for c in completion.choices] == [0, 1]
    texts = []
    for choice in completion.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        content = choice.logprobs.content
        assert "".join(t.token for t in content) == choice.message.content
        for entry in content:
            assert len(entry.top_logprobs) == 3 and entry.bytes == list(entry.token.encode())
            # Greedy: the chosen token is the most likely one of the processed distribution.
            assert entry.top_logprobs[0].token == entry.token
            assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
            assert entry.logprob <= 0 and entry.top_logprobs[1].logprob <= entry.logprob
        texts.append(choice.message.content)
    assert texts[0] == texts[1] and "Paris" in (texts[0] or "")
    usage = completion.usage
    assert usage is not None and usage.completion_tokens >= sum(len(c.logprobs.content) for c in completion.choices)  # type: ignore[union-attr]

    # Streamed: choices interleave, each with its role, logprobs on its content chunks and one finish; one [DONE].
    options = {"stream": True, "stream_options": {"include_usage": True}}
    streamed = ask(router, logprobs=True, top_logprobs=2, n=2, **options, **extra)
    assert streamed.headers["x-router-tier"] == "small"
    assert streamed.status_code == 200, streamed.text
    datas = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]" and datas.count("[DONE]") == 1
    chunks = [openai_schema.chunk(json.loads(data)) for data in datas[:-1]]
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == usage.completion_tokens
    by_index: dict[int, list[Any]] = {0: [], 1: []}
    for c in chunks[:-1]:
        by_index[c.choices[0].index].append(c.choices[0])
    for choices in by_index.values():
        assert sum(1 for c in choices if c.delta.role == "assistant") == 1
        assert sum(1 for c in choices if c.finish_reason) == 1
        content = [c for c in choices if c.delta.content]
        assert all(c.logprobs is not None and c.logprobs.content for c in content)
        assert "".join(c.delta.content for c in content) == texts[0]
        tokens = [t for c in choices if c.logprobs for t in c.logprobs.content or []]
        assert "".join(t.token for t in tokens) == texts[0] and all(len(t.top_logprobs) == 2 for t in tokens)


def test_the_worker_names_a_bad_parameter(start_worker: WorkerFactory) -> None:
    small = start_worker("small")
    for body, param in (
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"n": 5}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ):
        response = ask(small, **body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, body
