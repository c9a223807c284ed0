"""pydantic-ai's Agent over an OpenAI chat model pointed at the router, answered by the real SmolLM2 workers:
run_sync and a streamed run, structured output through its output tool (a forced tool call: pydantic-ai sends
`tool_choice: required`) and through `NativeOutput` (a strict json_schema `response_format`)."""

from __future__ import annotations

from pydantic_ai import Agent, NativeOutput, ToolOutput
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

from tests.shapes import ASK_PERSON, Person

FRANCE = "What is the capital of France?"
SCIENTIST = str(ASK_PERSON[0]["content"])


def model(base_url: str, tier: str = "small") -> OpenAIChatModel:
    return OpenAIChatModel(tier, provider=OpenAIProvider(base_url=base_url, api_key="unused"))


def agent(base_url: str) -> Agent[None, str]:
    return Agent(model(base_url), model_settings=ModelSettings(temperature=0))


def test_run_sync_answers_paris(smollm_router: str) -> None:
    result = agent(smollm_router).run_sync(FRANCE)
    assert "Paris" in result.output


def test_run_stream_sync_answers_paris(smollm_router: str) -> None:
    result = agent(smollm_router).run_stream_sync(FRANCE)
    assert "Paris" in "".join(result.stream_text(delta=True))


def test_output_through_a_forced_tool_call(smollm_router: str) -> None:
    typed = Agent(model(smollm_router), output_type=ToolOutput(Person), model_settings=ModelSettings(temperature=0))
    result = typed.run_sync(SCIENTIST)
    assert isinstance(result.output, Person) and result.output.name


def test_output_through_a_json_schema(smollm_router: str) -> None:
    native = Agent(
        model(smollm_router, "large"), output_type=NativeOutput(Person), model_settings=ModelSettings(temperature=0)
    )
    result = native.run_sync(SCIENTIST)
    assert isinstance(result.output, Person) and result.output.name
