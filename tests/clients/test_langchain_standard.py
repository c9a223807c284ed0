"""LangChain's standard ChatModel integration suite (`langchain-tests`) run through ChatOpenAI against the router,
with real SmolLM2-135M workers behind small and large and the remote tier unreachable. Every test that still fails
is listed, with its reason, in XFAIL below, and nowhere else."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

XFAIL: dict[str, str] = {}
"""Test name -> why it fails today. Applied as strict xfails, so a test that starts passing must leave the list."""


@pytest.fixture(autouse=True)
def _known_failures(request: pytest.FixtureRequest) -> None:
    reason = XFAIL.get(request.node.originalname)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


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

    # Tools and response_format are not in the workers yet (issue 15, on another branch), and the remote tier that
    # would take them is unreachable here: the router answers such requests with a 400 naming the parameter.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def model_override_value(self) -> str:
        return "large"
