"""llama-index's OpenAILike against the router, answered by the real SmolLM2 workers: its default text path
(`complete` and `stream_complete` over `/v1/completions`), the chat path (`chat`, `stream_chat`), a forced tool call
(`chat_with_tools(tool_required=True)`) and a strict json_schema answer passed through `additional_kwargs`."""

from __future__ import annotations

from typing import Any

from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike

from tests.shapes import ASK_PERSON, STRICT_PERSON, check_person, check_weather_call

FRANCE = [ChatMessage(role="user", content="What is the capital of France?")]


def llm(base_url: str, **kwargs: Any) -> OpenAILike:
    settings = {"model": "small", "is_chat_model": True, "temperature": 0, "max_retries": 0, **kwargs}
    return OpenAILike(api_base=base_url, api_key="unused", **settings)


def test_the_default_text_completions_path(smollm_router: str) -> None:
    text = llm(smollm_router, is_chat_model=False)  # OpenAILike's default: /v1/completions
    assert "Paris" in text.complete("What is the capital of France?").text
    chunks = list(text.stream_complete("What is the capital of France?"))
    assert len(chunks) > 1 and "Paris" in chunks[-1].text


def test_chat_answers_paris(smollm_router: str) -> None:
    response = llm(smollm_router).chat(FRANCE)
    assert response.message.role == "assistant"
    assert "Paris" in (response.message.content or "")


def test_stream_chat_answers_paris(smollm_router: str) -> None:
    chunks = list(llm(smollm_router).stream_chat(FRANCE))
    assert len(chunks) > 1
    assert "Paris" in (chunks[-1].message.content or "")


def get_weather(city: str, days: int) -> str:
    """The weather forecast for a city, some days ahead."""
    return f"sunny in {city} in {days} days"


def test_a_forced_tool_call(smollm_router: str) -> None:
    model = llm(smollm_router, is_function_calling_model=True)
    tool = FunctionTool.from_defaults(fn=get_weather)
    response = model.chat_with_tools(
        [tool], user_msg="What will the weather be in Paris in 3 days?", tool_required=True
    )
    calls = model.get_tool_calls_from_response(response, error_on_no_tool_call=True)
    assert len(calls) == 1
    check_weather_call(calls[0].tool_name, calls[0].tool_kwargs)


def test_a_json_schema_answer(smollm_router: str) -> None:
    model = llm(smollm_router, model="large", additional_kwargs={"response_format": STRICT_PERSON})
    response = model.chat([ChatMessage(role="user", content=ASK_PERSON[0]["content"])])
    check_person(response.message.content or "")
