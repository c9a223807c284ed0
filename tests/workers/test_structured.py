"""Tools and structured output from the real SmolLM2 workers, both tiers (small fp32, large NF4): a forced tool
call and a strict `json_schema` answer parse and validate whatever the 135M model would have said, streamed and
not, in OpenAI's schema (tests/openai_schema.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests import openai_schema
from tests.helpers import RouterFactory, WorkerFactory, router_yaml
from tests.servers import ServerThread
from tests.shapes import ASK_PERSON, ASK_WEATHER, FORCED, PERSON, STRICT_PERSON, WEATHER, check_person
from tests.shapes import check_weather_call as check_call

pytestmark = pytest.mark.slow


def post(server: ServerThread, **body: Any) -> httpx.Response:
    payload = {"model": "m", "temperature": 0, "max_tokens": 60, **body}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=payload, timeout=180)
    assert response.status_code == 200, response.text
    return response


def streamed_calls(text: str) -> tuple[list[tuple[str, str, str]], str | None]:
    """(id, name, arguments) per streamed tool call, and the finish reason."""
    chunks = openai_schema.stream(text)
    calls: dict[int, list[str]] = {}
    finish = None
    for c in chunks:
        if not c.choices:
            continue
        finish = c.choices[0].finish_reason or finish
        for delta in c.choices[0].delta.tool_calls or []:
            if delta.id is not None:
                assert delta.function is not None and delta.function.name and delta.type == "function"
                assert delta.index not in calls, "the id and name come once, first"
                calls[delta.index] = [delta.id, delta.function.name, ""]
            elif delta.function is not None and delta.function.arguments:
                calls[delta.index][2] += delta.function.arguments
    return [(i, n, a) for i, n, a in calls.values()], finish


@pytest.mark.parametrize("tier", ["small", "large"])
def test_a_forced_tool_call_and_a_strict_schema_answer_validate(start_worker: WorkerFactory, tier: str) -> None:
    worker = start_worker(tier)
    for choice in (FORCED, "required"):
        forced = post(worker, messages=ASK_WEATHER, tools=[WEATHER], tool_choice=choice)
        answer = openai_schema.completion(forced.content)
        assert answer.choices[0].finish_reason == "tool_calls"
        calls = answer.choices[0].message.tool_calls or []
        assert len(calls) == 1 and calls[0].id.startswith("call_") and calls[0].type == "function"
        check_call(calls[0].function.name, calls[0].function.arguments)  # type: ignore[union-attr]

    streamed, finish = streamed_calls(
        post(worker, messages=ASK_WEATHER, tools=[WEATHER], tool_choice=FORCED, stream=True).text
    )
    assert finish == "tool_calls" and len(streamed) == 1 and streamed[0][0].startswith("call_")
    check_call(streamed[0][1], streamed[0][2])

    strict = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    answer = openai_schema.completion(post(worker, messages=ASK_PERSON, response_format=strict).content)
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), PERSON)
    chunks = openai_schema.stream(post(worker, messages=ASK_PERSON, response_format=strict, stream=True).text)
    jsonschema.validate(json.loads(openai_schema.text_of(chunks)), PERSON)

    anything = openai_schema.completion(
        post(worker, messages=ASK_PERSON, response_format={"type": "json_object"}).content
    )
    # Any object: a 135M model may fill a free-form object until max_tokens, so only a finished one must parse.
    content = anything.choices[0].message.content or ""
    assert content.startswith("{")
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_the_sdk_reads_tool_calls_and_parses_a_schema_answer(start_worker: WorkerFactory) -> None:
    small = start_worker("small")
    client = openai.OpenAI(base_url=f"{small.url}/v1", api_key="unused", max_retries=0)
    made = client.chat.completions.create(
        model="small",
        messages=ASK_WEATHER,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        temperature=0,
        max_tokens=60,
    )
    call = (made.choices[0].message.tool_calls or [])[0]
    check_call(call.function.name, call.function.arguments)  # type: ignore[union-attr]

    # The history of a tool call and its result is kept in the prompt: the model answers after it.
    history = [
        *ASK_WEATHER,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny, 24 C"}'},
    ]
    after = client.chat.completions.create(
        model="small",
        messages=history,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        temperature=0,
        max_tokens=30,
    )
    assert after.choices[0].message.content and not after.choices[0].message.tool_calls


def test_bad_tool_choices_and_formats_are_400s_naming_the_parameter(start_worker: WorkerFactory) -> None:
    small = start_worker("small")
    url = f"{small.url}/v1/chat/completions"
    cases = [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format"),
    ]
    for extra, param in cases:
        response = httpx.post(url, json={"messages": ASK_WEATHER, **extra}, timeout=60)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def test_a_forced_tool_call_comes_back_through_the_router(
    start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    small = start_worker("small")
    dead = "http://127.0.0.1:1/v1"
    router = start_router(router_yaml(f"{small.url}/v1", dead, dead))  # the shipped capabilities: small takes tools
    body = {"model": "small", "messages": ASK_WEATHER, "tools": [WEATHER], "tool_choice": FORCED}
    response = post(router, **body)
    assert response.headers["x-router-tier"] == "small"
    call = (openai_schema.completion(response.content).choices[0].message.tool_calls or [])[0]
    check_call(call.function.name, call.function.arguments)  # type: ignore[union-attr]
    streamed, finish = streamed_calls(post(router, **body, stream=True).text)
    assert finish == "tool_calls" and len(streamed) == 1
    check_call(streamed[0][1], streamed[0][2])


def test_a_constrained_answer_without_max_tokens_may_run_to_the_cap(start_worker: WorkerFactory) -> None:
    """A JSON answer cut at the worker's small default would be broken JSON, so it may run to `max_tokens_cap`;
    a free answer still stops at the default."""
    small = start_worker("small", max_tokens_default=4)
    url = f"{small.url}/v1/chat/completions"
    body = {"model": "m", "temperature": 0, "messages": ASK_PERSON}
    strict = openai_schema.completion(
        httpx.post(url, json={**body, "response_format": STRICT_PERSON}, timeout=180).content
    )
    assert strict.choices[0].finish_reason == "stop"
    check_person(strict.choices[0].message.content or "")
    free = openai_schema.completion(httpx.post(url, json=body, timeout=180).content)
    assert free.choices[0].finish_reason == "length"
    assert free.usage is not None and free.usage.completion_tokens == 4
