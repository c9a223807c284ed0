"""What a request needs a tier to support, and whether a chain of tiers can: pure functions of request and config."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import pytest

from router.core.config import Capability, TierConfig
from router.decide.capabilities import chain_gap, missing, needed_capabilities
from router.wire.protocol import ChatCompletionRequest, decode_chat_request

TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


def request(**fields: Any) -> ChatCompletionRequest:
    return decode_chat_request(msgspec.json.encode({"messages": [{"role": "user", "content": "hi"}], **fields}))


def tier(kind: Literal["worker", "remote"] = "worker", capabilities: list[Capability] | None = None) -> TierConfig:
    return TierConfig("http://127.0.0.1:1/v1", "m", kind=kind, capabilities=capabilities)


@pytest.mark.parametrize(
    ("fields", "needs"),
    [
        ({"tools": [TOOL]}, {"tools": "tools"}),
        ({"tools": [TOOL], "tool_choice": "required"}, {"tools": "tools"}),
        ({"tool_choice": {"type": "function", "function": {"name": "weather"}}}, {"tools": "tool_choice"}),
        ({"response_format": {"type": "json_object"}}, {"response_format": "response_format"}),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            {"response_format": "response_format"},
        ),
        ({"logprobs": True, "top_logprobs": 3}, {"logprobs": "logprobs"}),
        ({"top_logprobs": 2}, {"logprobs": "top_logprobs"}),
        ({"presence_penalty": 0.5}, {"penalties": "presence_penalty"}),
        ({"frequency_penalty": -1}, {"penalties": "frequency_penalty"}),
        ({"logit_bias": {"50256": -100}}, {"logit_bias": "logit_bias"}),
        ({"n": 3}, {"n": "n"}),
        (
            {"tools": [TOOL], "response_format": {"type": "json_object"}, "logprobs": True},
            {"tools": "tools", "response_format": "response_format", "logprobs": "logprobs"},
        ),
    ],
)
def test_each_parameter_needs_its_capability(fields: dict[str, Any], needs: dict[str, str]) -> None:
    assert needed_capabilities(request(**fields)) == needs


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"tools": []},
        {"tools": None},
        {"tool_choice": "auto"},
        {"tool_choice": "none"},
        {"response_format": {"type": "text"}},
        {"response_format": None},
        {"logprobs": False, "top_logprobs": 0},
        {"presence_penalty": 0.0, "frequency_penalty": 0},
        {"logit_bias": {}},
        {"logit_bias": None},
        {"n": 1},
        {"temperature": 0.2, "top_p": 0.9, "seed": 1, "stop": ["x"], "max_tokens": 5},
    ],
)
def test_no_op_values_need_nothing(fields: dict[str, Any]) -> None:
    assert needed_capabilities(request(**fields)) == {}


def test_remote_tiers_support_everything_and_workers_nothing_unless_declared() -> None:
    needs = needed_capabilities(request(tools=[TOOL], logprobs=True))
    assert missing(tier("remote"), needs) == []
    assert missing(tier("worker"), needs) == ["tools", "logprobs"]
    assert missing(tier("worker", ["logprobs"]), needs) == ["tools"]
    assert missing(tier("remote", []), needs) == ["tools", "logprobs"]


def test_a_chain_with_one_capable_tier_has_no_gap() -> None:
    tiers = {"small": tier(), "remote": tier("remote")}
    needs = needed_capabilities(request(tools=[TOOL]))
    assert chain_gap(["small", "remote"], tiers, needs) is None
    assert chain_gap(["small"], tiers, {}) is None


def test_the_gap_names_the_parameter_and_what_each_tier_lacks() -> None:
    tiers = {"small": tier(), "large": tier("worker", ["logprobs"]), "remote": tier("remote", ["logprobs"])}
    gap = chain_gap(["small", "large"], tiers, needed_capabilities(request(tools=[TOOL], top_logprobs=2)))
    assert gap is not None and gap.param == "tools"
    assert "tier 'small' lacks tools, logprobs; tier 'large' lacks tools" in gap.message


def test_capabilities_spread_over_tiers_but_never_together_name_the_first_tiers_lack() -> None:
    tiers = {"small": tier("worker", ["tools"]), "large": tier("worker", ["response_format"])}
    needs = needed_capabilities(request(tools=[TOOL], response_format={"type": "json_object"}))
    gap = chain_gap(["small", "large"], tiers, needs)
    assert gap is not None and gap.param == "response_format"
    assert "'tools', 'response_format' together" in gap.message
