"""LiteLLM's completion, plain and streamed, against the router (as an `openai/` provider), answered by the real
small worker. The test environment (tests/clients/conftest.py) keeps LiteLLM's cost map local."""

from __future__ import annotations

from typing import Any

import litellm
import pytest

# LiteLLM builds pydantic models of its own TypedDicts (a GitHub Copilot device code) on its first call.
pytestmark = pytest.mark.filterwarnings("ignore:Items? .* using the `ReadOnly` qualifier:UserWarning")
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def ask(base_url: str, **kwargs: Any) -> Any:
    return litellm.completion(
        model="openai/small", api_base=base_url, api_key="unused", messages=FRANCE, temperature=0, **kwargs
    )


def test_completion_answers_paris(smollm_router: str) -> None:
    response = ask(smollm_router)
    assert response.choices[0].message.role == "assistant"
    assert "Paris" in response.choices[0].message.content
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens > 0


def test_stream_answers_paris(smollm_router: str) -> None:
    chunks = list(ask(smollm_router, stream=True))
    assert len(chunks) > 1
    assert "Paris" in "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
