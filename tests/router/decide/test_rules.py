"""Routing rules as a pure function: ordering, every kind of match, forced tiers."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from router.core.config import Config, decode_struct, validate
from router.decide.classify.base import Verdict
from router.decide.conversation import Conversation
from router.decide.rules import RouteInput, RuleSet
from router.wire.errors import PermissionDenied, UnknownModel
from router.wire.protocol import ChatCompletionRequest, RouteDecision, decode_chat_request

TIERS = {
    "small": {"base_url": "http://s/v1", "model": "s", "fallback": ["large"]},
    "large": {"base_url": "http://l/v1", "model": "l", "guardrails": True, "fallback": ["remote"]},
    "remote": {"base_url": "http://r/v1", "model": "r", "kind": "remote", "guardrails": True},
}


def ruleset(rules: list[dict[str, Any]], **extra: Any) -> RuleSet:
    config = decode_struct({"tiers": TIERS, "rules": rules, **extra}, Config, "test.yaml")
    validate(config)
    return RuleSet(config)


def decide(
    rules: RuleSet, score: float = 0.2, headers: dict[str, str] | None = None, key_group: str | None = None, **body: Any
) -> RouteDecision:
    body.setdefault("messages", [{"role": "user", "content": "hello there"}])
    request = decode_chat_request(msgspec.json.encode(body))
    conversation = Conversation.from_request(request, 32_000)
    return rules.decide(RouteInput(request, conversation, Verdict(score, ["r"]), headers or {}, key_group))


DEFAULT = {"name": "default", "tier": "large"}


def test_first_match_wins_and_default_is_last() -> None:
    rules = ruleset(
        [
            {"name": "a", "tier": "small", "when": {"score": {"max": 0.5}}},
            {"name": "b", "tier": "remote", "when": {"score": {"max": 0.9}}},
            DEFAULT,
        ]
    )
    assert decide(rules, 0.1).rule == "a"
    assert decide(rules, 0.5).rule == "b"
    assert decide(rules, 0.95).rule == "default"


def test_complexity_uses_the_threshold() -> None:
    rules = ruleset(
        [{"name": "simple", "tier": "small", "when": {"complexity": "simple"}}, DEFAULT], classifier={"threshold": 0.3}
    )
    assert decide(rules, 0.29).tier == "small"
    assert decide(rules, 0.3).tier == "large"


def test_regex_header_tokens_tools_format_model_group() -> None:
    rules = ruleset(
        [
            {"name": "regex", "tier": "remote", "when": {"last_user_regex": "(?i)translate"}},
            {"name": "header", "tier": "small", "when": {"headers": {"X-Tier": "^small$"}}},
            {"name": "tokens", "tier": "remote", "when": {"prompt_tokens": {"min": 1000}}},
            {"name": "tools", "tier": "large", "when": {"has_tools": True}},
            {"name": "format", "tier": "small", "when": {"has_response_format": True}},
            {"name": "alias", "tier": "remote", "when": {"model": ["gpt-4o"]}},
            {"name": "group", "tier": "small", "when": {"key_group": ["free"]}},
            DEFAULT,
        ]
    )
    assert decide(rules, messages=[{"role": "user", "content": "Please TRANSLATE this"}]).rule == "regex"
    # the regex reads the last user message only
    earlier = [
        {"role": "user", "content": "translate"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "hi"},
    ]
    assert decide(rules, messages=earlier).rule == "default"
    assert decide(rules, headers={"x-tier": "small"}).rule == "header"
    assert decide(rules, headers={"x-tier": "smallish"}).rule == "default"
    assert decide(rules, messages=[{"role": "user", "content": "word " * 2000}]).rule == "tokens"
    assert decide(rules, tools=[{"type": "function", "function": {"name": "f"}}]).rule == "tools"
    assert decide(rules, tools=[]).rule == "default"
    assert decide(rules, response_format={"type": "json_object"}).rule == "format"
    assert decide(rules, model="gpt-4o").rule == "alias"
    assert decide(rules, key_group="free").rule == "group"
    assert decide(rules, key_group="paid").rule == "default"


def test_action_guardrails_and_fallback_default_to_the_tier() -> None:
    rules = ruleset(
        [
            {"name": "x", "tier": "small", "when": {"score": {"max": 0.5}}, "guardrails": True, "fallback": ["remote"]},
            DEFAULT,
        ]
    )
    explicit = decide(rules, 0.1)
    assert (explicit.guardrails, explicit.fallback) == (True, ["remote"])
    inherited = decide(rules, 0.9)
    assert (inherited.guardrails, inherited.fallback) == (True, ["remote"])


def test_forced_tiers_and_unknown_models() -> None:
    rules = ruleset([DEFAULT])
    forced = decide(rules, model="small")
    assert (forced.tier, forced.rule, forced.fallback) == ("small", "forced", ["large"])
    with pytest.raises(UnknownModel):
        decide(rules, model="gpt-9")
    with pytest.raises(PermissionDenied):
        decide(ruleset([DEFAULT], routing={"allow_forced_tier": False}), model="small")
    assert decide(rules, model="auto").rule == "default"
    assert rules.model_names() == ["auto", "small", "large", "remote"]


def test_request_helpers() -> None:
    request = ChatCompletionRequest(messages=[])
    assert request.token_limit() is None
    both = decode_chat_request(b'{"messages":[{"role":"user","content":"x"}],"max_tokens":9,"max_completion_tokens":5}')
    assert both.token_limit() == 5
