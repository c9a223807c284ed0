"""Routing rules: a pure function from (request, conversation, score, headers) to a decision.

Rules are evaluated in order and the first match wins; the last rule is the default. A
request whose `model` names a tier is forced there (unless the config forbids it), with
that tier's own guardrails and fallback settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from router.core.config import Config, Match, Rule
from router.decide.classify.base import Verdict
from router.decide.conversation import Conversation
from router.wire.errors import PermissionDenied, UnknownModel
from router.wire.protocol import ChatCompletionRequest, RouteDecision

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class RouteInput:
    """What a rule may look at, besides the request itself."""

    request: ChatCompletionRequest
    conversation: Conversation
    verdict: Verdict
    headers: Mapping[str, str]
    """Request headers, names lower-cased."""
    key_group: str | None = None
    may_force: bool = True
    """May the caller choose its tier (no auth, or a key with `force_tiers`)? If not, `model` naming a tier is a
    403, and rules that match on request headers (a client-chosen tier) do not match."""


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    rule: Rule
    last_user: re.Pattern[str] | None
    headers: tuple[tuple[str, re.Pattern[str]], ...]
    models: frozenset[str] | None

    def matches(self, given: RouteInput, threshold: float) -> bool:
        when: Match = self.rule.when
        score = given.verdict.score
        if when.score is not None and not when.score.contains(score):
            return False
        if when.complexity is not None and when.complexity != ("simple" if score < threshold else "complex"):
            return False
        if when.prompt_tokens is not None and not when.prompt_tokens.contains(given.conversation.prompt_tokens):
            return False
        if when.has_tools is not None and when.has_tools != given.request.has_tools():
            return False
        if when.has_response_format is not None and when.has_response_format != given.request.has_response_format():
            return False
        if self.models is not None and given.request.model not in self.models:
            return False
        if when.key_group is not None and given.key_group not in when.key_group:
            return False
        if self.headers and not given.may_force:
            return False
        for name, pattern in self.headers:
            value = given.headers.get(name)
            if value is None or pattern.search(value) is None:
                return False
        return self.last_user is None or self.last_user.search(given.conversation.last_user) is not None


class RuleSet:
    """The compiled rules of one config; `decide` is pure."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._threshold = config.classifier.threshold
        self._rules = [
            _CompiledRule(
                rule=rule,
                last_user=re.compile(rule.when.last_user_regex) if rule.when.last_user_regex else None,
                headers=tuple((h.lower(), re.compile(p)) for h, p in (rule.when.headers or {}).items()),
                models=frozenset(rule.when.model) if rule.when.model is not None else None,
            )
            for rule in config.rules
        ]
        self._aliases = frozenset(m for r in config.rules for m in (r.when.model or ()))

    @property
    def threshold(self) -> float:
        return self._threshold

    def model_names(self) -> list[str]:
        """What `GET /v1/models` lists: `auto`, each tier, then rule aliases."""
        names = [AUTO, *self._config.tiers]
        return names + sorted(self._aliases - set(names))

    def decide(self, given: RouteInput) -> RouteDecision:
        model = given.request.model
        tiers = self._config.tiers
        verdict = given.verdict
        if model in tiers and model not in self._aliases:
            if not self._config.routing.allow_forced_tier:
                raise PermissionDenied(f"forcing a tier is disabled on this router; use model '{AUTO}'", param="model")
            if not given.may_force:
                raise PermissionDenied(
                    f"this API key may not choose its tier (auth.keys[].force_tiers); use model '{AUTO}'",
                    param="model",
                    code="tier_not_allowed",
                )
            tier = tiers[model]
            reasons = [f"model '{model}' forces tier '{model}'", *verdict.reasons]
            return RouteDecision(model, verdict.score, "forced", reasons, tier.guardrails, list(tier.fallback))
        if model != AUTO and model not in self._aliases:
            known = ", ".join(self.model_names())
            raise UnknownModel(f"unknown model or tier '{model}' (known: {known})", param="model")
        for compiled in self._rules:
            if compiled.matches(given, self._threshold):
                rule = compiled.rule
                tier = tiers[rule.tier]
                guardrails = tier.guardrails if rule.guardrails is None else rule.guardrails
                fallback = list(tier.fallback if rule.fallback is None else rule.fallback)
                reasons = [
                    f"rule '{rule.name}' matched (score {verdict.score:.3f}, threshold {self._threshold:.3f})",
                    *verdict.reasons,
                ]
                return RouteDecision(rule.tier, verdict.score, rule.name, reasons, guardrails, fallback)
        raise AssertionError("config validation guarantees a default rule")  # pragma: no cover
