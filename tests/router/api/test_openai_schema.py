"""Every answer the router gives conforms to OpenAI's schema (tests/openai_schema.py): passed through from an
upstream, streamed, continued on another tier mid-stream, and the model endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai.types import Model

from tests import openai_schema
from tests.helpers import RouterFactory, router_yaml, serve_standins
from tests.servers import ServerThread

QUESTION = [{"role": "user", "content": "one two three four five six seven eight nine ten"}]


def chat(router: ServerThread, **body: Any) -> httpx.Response:
    response = httpx.post(f"{router.url}/v1/chat/completions", json={"messages": QUESTION, **body}, timeout=30)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("model", ["small", "large", "remote"])
def test_a_passed_through_answer_conforms(start_router: RouterFactory, model: str) -> None:
    router = start_router()
    response = chat(router, model=model)
    completion = openai_schema.completion(response.content)
    message = response.json()["choices"][0]["message"]
    assert message["role"] == "assistant" and message["refusal"] is None
    assert completion.choices[0].message.content == f"[{model}] one two three four five six seven eight nine ten"
    assert completion.usage is not None and completion.usage.completion_tokens == 11


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_passed_through_stream_conforms(start_router: RouterFactory, include_usage: bool) -> None:
    router = start_router()
    response = chat(router, model="small", stream=True, stream_options={"include_usage": include_usage})
    chunks = openai_schema.stream(response.text, usage=include_usage)
    assert openai_schema.text_of(chunks) == "[small] one two three four five six seven eight nine ten"


@pytest.fixture
def upstreams() -> Iterator[dict[str, ServerThread]]:
    """Fresh stand-ins (their scripts are this test's own)."""
    with serve_standins() as servers:
        yield servers


def test_a_continued_stream_conforms(start_router: RouterFactory, upstreams: dict[str, ServerThread]) -> None:
    """`large` breaks off after three words; `remote` continues: one stream, one id, one role, one finish."""
    raw = router_yaml(*(f"{upstreams[t].url}/v1" for t in ("small", "large", "remote")))
    raw["tiers"]["large"]["guardrails"] = False
    router = start_router(raw)
    upstreams["large"].server.config.app.settings.script.append("die:3")
    response = chat(router, model="large", stream=True, stream_options={"include_usage": True})
    assert ": x-router-fallback large->remote (connection_lost), mid-stream" in response.text
    chunks = openai_schema.stream(response.text, usage=True)
    assert openai_schema.text_of(chunks).startswith("[large] one two[remote]")
    assert {c.model for c in chunks} == {"large"}


def test_the_model_endpoints_conform(start_router: RouterFactory) -> None:
    router = start_router()
    listed = httpx.get(f"{router.url}/v1/models").json()
    assert listed["object"] == "list"
    cards = [Model.model_validate(card, strict=True) for card in listed["data"]]
    for card in cards:
        one = httpx.get(f"{router.url}/v1/models/{card.id}")
        assert one.status_code == 200, one.text
        assert Model.model_validate(one.json(), strict=True) == card
    missing = httpx.get(f"{router.url}/v1/models/gpt-9")
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "message": "The model 'gpt-9' does not exist; GET /v1/models lists the models",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    nested = httpx.get(f"{router.url}/v1/models/org/gpt-9")
    assert nested.status_code == 404 and "'org/gpt-9'" in nested.json()["error"]["message"]
