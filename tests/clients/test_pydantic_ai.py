"""pydantic-ai's Agent over an OpenAI chat model pointed at the router: run_sync and a streamed run, answered by
the real small worker."""

from __future__ import annotations

from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

FRANCE = "What is the capital of France?"


def agent(base_url: str) -> Agent[None, str]:
    model = OpenAIChatModel("small", provider=OpenAIProvider(base_url=base_url, api_key="unused"))
    return Agent(model, model_settings=ModelSettings(temperature=0))


def test_run_sync_answers_paris(smollm_router: str) -> None:
    result = agent(smollm_router).run_sync(FRANCE)
    assert "Paris" in result.output


def test_run_stream_sync_answers_paris(smollm_router: str) -> None:
    result = agent(smollm_router).run_stream_sync(FRANCE)
    assert "Paris" in "".join(result.stream_text(delta=True))
