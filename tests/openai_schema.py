"""The OpenAI chat schema as the tests check it: the `openai` SDK's own pydantic models in strict mode, plus the
keys OpenAI's OpenAPI document (github.com/openai/openai-openapi, openapi.yaml) requires but the SDK's models
leave optional (they give nullable fields a default). The schema is the spec here, never our own structs."""

from __future__ import annotations

import json
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

REQUIRED_COMPLETION = ("id", "object", "created", "model", "choices")
"""`CreateChatCompletionResponse.required`."""
REQUIRED_CHOICE = ("index", "message", "finish_reason", "logprobs")
"""`CreateChatCompletionResponse.choices.items.required` (`logprobs` is nullable, not optional)."""
REQUIRED_MESSAGE = ("role", "content", "refusal")
"""`ChatCompletionResponseMessage.required` (`content` and `refusal` are nullable, not optional)."""
REQUIRED_CHUNK = ("id", "object", "created", "model", "choices")
"""`CreateChatCompletionStreamResponse.required`."""
REQUIRED_CHUNK_CHOICE = ("index", "delta", "finish_reason")
"""`CreateChatCompletionStreamResponse.choices.items.required`."""


def _missing(where: str, value: dict[str, Any], keys: tuple[str, ...]) -> None:
    absent = [key for key in keys if key not in value]
    assert not absent, f"{where} lacks required {absent}: {value}"


def completion(body: bytes | str | dict[str, Any]) -> ChatCompletion:
    """A non-streamed answer, checked against the schema; the SDK's parsed model."""
    data: dict[str, Any] = body if isinstance(body, dict) else json.loads(body)
    parsed = ChatCompletion.model_validate(data, strict=True)
    _missing("chat.completion", data, REQUIRED_COMPLETION)
    for choice in data["choices"]:
        _missing("choice", choice, REQUIRED_CHOICE)
        _missing("message", choice["message"], REQUIRED_MESSAGE)
    return parsed


def chunk(data: dict[str, Any]) -> ChatCompletionChunk:
    parsed = ChatCompletionChunk.model_validate(data, strict=True)
    _missing("chat.completion.chunk", data, REQUIRED_CHUNK)
    for choice in data["choices"]:
        _missing("chunk choice", choice, REQUIRED_CHUNK_CHOICE)
    return parsed


def stream(text: str, *, usage: bool = False) -> list[ChatCompletionChunk]:
    """An SSE body as OpenAI streams one: every event a valid chunk of one id and model, the role on the first
    chunk with choices, one finish, and `data: [DONE]` last; with `usage`, a usage chunk (no choices) just
    before it. Comments (`: ...`) are allowed anywhere, as SSE allows them."""
    datas = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert datas and datas[-1] == "[DONE]", text[-500:]
    events = [json.loads(data) for data in datas[:-1]]
    chunks = [chunk(event) for event in events]
    assert len({c.id for c in chunks}) == 1 and len({c.model for c in chunks}) == 1, text
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant", events[0]
    assert sum(1 for c in with_choices if c.choices[0].delta.role) == 1, "the role is sent once"
    finishes = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    assert len(finishes) == 1, finishes
    if usage:
        last = chunks[-1]
        assert last.usage is not None and last.choices == [], events[-1]
        assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
        assert last.usage.completion_tokens > 0
    else:
        assert all(c.usage is None for c in chunks)
    return chunks


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
