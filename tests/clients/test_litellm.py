"""LiteLLM's completion, plain and streamed, a forced tool call and a json_schema answer, against the router (as an
`openai/` provider), answered by the real SmolLM2 workers. The test environment (tests/clients/conftest.py) keeps
LiteLLM's cost map local."""

from __future__ import annotations

from typing import Any

import litellm
import pytest

from tests.shapes import ASK_PERSON, ASK_WEATHER, FORCED, STRICT_PERSON, WEATHER, check_person, check_weather_call

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


def test_a_forced_tool_call(smollm_router: str) -> None:
    response = litellm.completion(
        model="openai/small",
        api_base=smollm_router,
        api_key="unused",
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice=FORCED,
        temperature=0,
    )
    assert response.choices[0].finish_reason == "tool_calls"
    call = response.choices[0].message.tool_calls[0]
    check_weather_call(call.function.name, call.function.arguments)


def test_a_json_schema_answer_streamed(smollm_router: str) -> None:
    chunks = litellm.completion(
        model="openai/large",
        api_base=smollm_router,
        api_key="unused",
        messages=ASK_PERSON,
        response_format=STRICT_PERSON,
        temperature=0,
        stream=True,
    )
    check_person("".join(chunk.choices[0].delta.content or "" for chunk in chunks))
