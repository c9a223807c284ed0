"""LangChain's standard ChatModel integration suite (`langchain-tests`) run through ChatOpenAI against the router,
with real SmolLM2-135M workers behind small and large and the remote tier unreachable. Every test that still fails
is listed, with its reason, in XFAIL below, and nowhere else."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

LOOPS = (
    "SmolLM2-135M, greedy, repeats itself inside the joke's first string field until the token cap ('A cat is a "
    "cat, a cat is a cat, ...'): the grammar keeps the JSON valid as far as it goes, but cannot end a string the "
    "model will not end, so the answer stops at finish_reason length and the client cannot parse it"
)
XFAIL: dict[str, str] = {
    "test_structured_output": LOOPS,
    "test_structured_output_async": LOOPS,
    "test_structured_output_optional_param": LOOPS,
    "test_structured_output_pydantic_2_v1": LOOPS,  # its pydantic v2 half, through json_schema
    "test_json_mode": (
        "json_object mode constrains the answer to a JSON object, not to the Joke's fields (the prompt only asks for "
        "them), and SmolLM2-135M writes {'setup': ...} without the required 'punchline'"
    ),
    "test_agent_loop": (
        "tool_choice is 'auto': the model decides whether to call get_weather, and SmolLM2-135M answers the "
        "weather question in prose instead ('The weather in San Francisco ... is typically ...')"
    ),
}
"""Test name -> why it fails today, each only because a 135M model answers poorly. Applied as strict xfails, so
a test that starts passing must leave the list."""


@pytest.fixture(autouse=True)
def _known_failures(request: pytest.FixtureRequest) -> None:
    reason = XFAIL.get(request.node.originalname)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# test_structured_output_pydantic_2_v1: langchain-openai warns that a pydantic.v1 model cannot use json_schema and
# switches to function calling (a forced tool call), which is what the test is about; the warning is not ours.
@pytest.mark.filterwarnings("ignore:Received a Pydantic BaseModel V1 schema:UserWarning")
class TestChatOpenAIThroughTheRouter(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _router(self, smollm_router: str) -> None:
        self.base_url = smollm_router

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "api_key": "unused",
            "model": "small",
            "temperature": 0,
            "max_retries": 0,
            "stream_usage": True,
        }

    # Both worker tiers enforce tools (tool_choice required or named: grammar-constrained) and response_format.
    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "large"
