"""LangChain's ChatOpenAI against the router: invoke, ainvoke, batch and stream, answered by the real small worker."""

from __future__ import annotations

from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI

FRANCE = "What is the capital of France?"


def chat(base_url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=base_url, api_key="unused", model="small", temperature=0, max_retries=0)


def assert_paris(answer: AIMessage) -> None:
    assert isinstance(answer.content, str) and "Paris" in answer.content
    assert answer.response_metadata["finish_reason"] == "stop"
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0


def test_invoke_and_batch_answer_paris(smollm_router: str) -> None:
    model = chat(smollm_router)
    for answer in [model.invoke(FRANCE), *model.batch([FRANCE, FRANCE])]:
        assert_paris(answer)


async def test_ainvoke_answers_paris(smollm_router: str) -> None:
    """Async, on the session's loop (tests/clients/conftest.py): langchain-openai caches its async client."""
    assert_paris(await chat(smollm_router).ainvoke(FRANCE))


def test_stream_answers_paris_in_chunks(smollm_router: str) -> None:
    chunks = list(chat(smollm_router).stream(FRANCE))
    assert len(chunks) > 1
    assert "Paris" in "".join(str(chunk.content) for chunk in chunks)
