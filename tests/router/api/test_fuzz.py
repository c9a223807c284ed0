"""Fuzzing: schemathesis cases from the router's OpenAPI schema, and hypothesis properties of the classifiers
and rules. No input may produce a 5xx or a hang; every score is in [0, 1].
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from router.api.openapi import openapi_document
from router.core.config import Config
from router.decide.classify.heuristic import HeuristicClassifier
from router.decide.conversation import Conversation
from router.decide.rules import RouteInput, RuleSet
from router.wire.protocol import ChatCompletionRequest, ChatMessage
from tests.helpers import RouterFactory, router_yaml
from tests.servers import ServerThread

SCHEMA = schemathesis.openapi.from_dict(openapi_document("test"))
FUZZ = [
    ("/v1/chat/completions", "POST", GenerationMode.POSITIVE, 1200),
    ("/v1/chat/completions", "POST", GenerationMode.NEGATIVE, 600),
    ("/v1/route", "POST", GenerationMode.POSITIVE, 500),
    ("/v1/route", "POST", GenerationMode.NEGATIVE, 500),
    ("/v1/models", "GET", GenerationMode.POSITIVE, 50),
    ("/v1/completions", "POST", GenerationMode.POSITIVE, 300),
    ("/v1/completions", "POST", GenerationMode.NEGATIVE, 200),
    ("/v1/responses", "POST", GenerationMode.POSITIVE, 400),
    ("/v1/responses", "POST", GenerationMode.NEGATIVE, 200),
    ("/v1/embeddings", "POST", GenerationMode.POSITIVE, 50),
    ("/v1/embeddings", "POST", GenerationMode.NEGATIVE, 100),
]
DROPPED = {"accept-encoding", "connection", "authorization"}


def test_fuzzing_the_api_finds_no_server_error_and_no_hang(
    start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    router = start_router(router_yaml(*(f"{standins[t].url}/v1" for t in ("small", "large", "remote"))))
    statuses: Counter[int] = Counter()
    with httpx.Client(timeout=15) as client:  # a hang is a timeout, which fails the case
        for path, method, mode, examples in FUZZ:

            @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=SCHEMA[path][method].as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                sent = case.as_transport_kwargs(base_url=router.url)
                headers = {k: v for k, v in sent["headers"].items() if k.lower() not in DROPPED}
                kwargs: dict[str, Any] = {"headers": headers, "params": sent.get("params")}
                if "json" in sent:
                    kwargs["json"] = sent["json"]
                elif sent.get("data") is not None:
                    kwargs["content"] = sent["data"]
                response = client.request(sent["method"], sent["url"], **kwargs)
                statuses[response.status_code] += 1
                assert response.status_code < 500, (sent.get("json"), response.status_code, response.text[:500])
                if response.status_code >= 400:
                    assert "error" in response.json(), response.text[:500]

            run()
    total = sum(statuses.values())
    assert total >= 2500, statuses  # a few thousand cases in all
    assert statuses[200] > 0 and sum(v for k, v in statuses.items() if 400 <= k < 500) > 0, statuses


TEXT = st.text(max_size=400)
MESSAGE = st.builds(
    ChatMessage,
    role=st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
    content=st.one_of(st.none(), TEXT),
)


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(MESSAGE, min_size=1, max_size=8), max_chars=st.integers(256, 5000))
def test_the_heuristic_classifier_never_crashes_and_scores_in_unit_range(
    messages: list[ChatMessage], max_chars: int
) -> None:
    conversation = Conversation.from_request(ChatCompletionRequest(messages), max_chars)
    verdict = HeuristicClassifier().score(conversation)
    assert 0.0 <= verdict.score <= 1.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    messages=st.lists(MESSAGE, min_size=1, max_size=6),
    score=st.floats(0.0, 1.0),
    headers=st.dictionaries(st.sampled_from(["x-tier", "x-other", "user-agent"]), TEXT, max_size=3),
    model=st.sampled_from(["auto", "small", "large", "remote"]),
    group=st.one_of(st.none(), st.sampled_from(["team-a", "ops"])),
)
def test_the_rules_always_decide_a_known_tier(
    shipped_config: Config,
    messages: list[ChatMessage],
    score: float,
    headers: dict[str, str],
    model: str,
    group: str | None,
) -> None:
    request = ChatCompletionRequest(messages, model=model)
    conversation = Conversation.from_request(request, 4000)
    verdict = HeuristicClassifier().score(conversation)._replace(score=score)
    decision = RuleSet(shipped_config).decide(RouteInput(request, conversation, verdict, headers, group))
    assert decision.tier in shipped_config.tiers
    assert all(tier in shipped_config.tiers for tier in decision.fallback)
    assert 0.0 <= decision.score <= 1.0


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_the_embedding_classifier_scores_in_unit_range(shipped_config: Config, text: str) -> None:
    classifier = _embedding(shipped_config)
    conversation = Conversation.from_request(ChatCompletionRequest([ChatMessage(role="user", content=text)]), 4000)
    assert 0.0 <= classifier.score(conversation).score <= 1.0


_CACHE: dict[str, Any] = {}


def _embedding(config: Config) -> Any:
    if "embedding" not in _CACHE:
        import msgspec

        from router.decide.classify.registry import build_classifier

        embedding = msgspec.structs.replace(
            config, classifier=msgspec.structs.replace(config.classifier, kind="embedding")
        )
        classifier = build_classifier(embedding)
        classifier.load()
        _CACHE["embedding"] = classifier
    return _CACHE["embedding"]
