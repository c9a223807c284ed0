"""A real worker's answers (SmolLM2-135M-Instruct, greedy) conform to OpenAI's schema (tests/openai_schema.py),
served directly and passed through the router, streamed and not; its unknown paths answer in the error shape."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests import openai_schema
from tests.helpers import RouterFactory, WorkerFactory, router_yaml
from tests.servers import ServerThread

pytestmark = pytest.mark.slow
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
DEAD = "http://127.0.0.1:1/v1"


def ask(server: ServerThread, **body: Any) -> httpx.Response:
    payload = {"model": "small", "messages": FRANCE, "temperature": 0, "max_tokens": 12, **body}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    return response


def test_a_worker_answer_conforms_directly_and_through_the_router(
    start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    small = start_worker("small")
    router = start_router(router_yaml(f"{small.url}/v1", DEAD, DEAD))
    for server in (small, router):
        response = ask(server)
        completion = openai_schema.completion(response.content)
        message = response.json()["choices"][0]["message"]
        assert message["role"] == "assistant" and message["refusal"] is None
        assert "Paris" in (completion.choices[0].message.content or "")
        assert completion.choices[0].finish_reason in ("stop", "length")
        usage = completion.usage
        assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0

        for include_usage in (True, False):
            streamed = ask(server, stream=True, stream_options={"include_usage": include_usage})
            chunks = openai_schema.stream(streamed.text, usage=include_usage)
            assert "Paris" in openai_schema.text_of(chunks)

    # The SDK, whose own parsing is what LangChain and others build on, reads the worker's answer as is.
    client = openai.OpenAI(base_url=f"{small.url}/v1", api_key="unused", max_retries=0)
    parsed = client.chat.completions.create(model="small", messages=FRANCE, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    assert parsed.choices[0].message.role == "assistant" and "Paris" in (parsed.choices[0].message.content or "")


def test_a_worker_names_an_unknown_path_and_its_own_endpoints(start_worker: WorkerFactory) -> None:
    small = start_worker("small", wait_ready=False)
    response = httpx.post(f"{small.url}/v1/completions", json={"prompt": "hi"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_url" and error["message"].startswith("Invalid URL (POST /v1/completions)")
    assert "POST /v1/chat/completions" in error["message"] and "GET /v1/memory" in error["message"]
    assert "/v1/route" not in error["message"], "a worker lists its own endpoints, not the router's"
