"""The `openai` SDK, sync and async, against the router in front of the real SmolLM2 workers: a completion, a
stream, a forced tool call (streamed too) and `.parse()` into a Pydantic model through a strict json_schema."""

from __future__ import annotations

from typing import Any

import openai

from tests.shapes import ASK_PERSON, ASK_WEATHER, FORCED, WEATHER, Person, check_weather_call

FRANCE: Any = [{"role": "user", "content": "What is the capital of France?"}]


def test_the_sync_client(smollm_router: str) -> None:
    client = openai.OpenAI(base_url=smollm_router, api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model="small", messages=FRANCE, temperature=0)
    assert "Paris" in (answer.choices[0].message.content or "")

    stream = client.chat.completions.create(model="small", messages=FRANCE, temperature=0, stream=True)
    assert "Paris" in "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    called = client.chat.completions.create(
        model="small",
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice=FORCED,
        temperature=0,  # type: ignore[arg-type]
    )
    assert called.choices[0].finish_reason == "tool_calls"
    call = (called.choices[0].message.tool_calls or [])[0]
    check_weather_call(call.function.name, call.function.arguments)  # type: ignore[union-attr]

    with client.chat.completions.stream(
        model="small",
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice=FORCED,
        temperature=0,  # type: ignore[arg-type]
    ) as events:
        final = events.get_final_completion()
    streamed = (final.choices[0].message.tool_calls or [])[0]
    check_weather_call(streamed.function.name, streamed.function.arguments)

    parsed = client.chat.completions.parse(model="small", messages=ASK_PERSON, response_format=Person, temperature=0)  # type: ignore[arg-type]
    person = parsed.choices[0].message.parsed
    assert isinstance(person, Person) and person.name


async def test_the_async_client(smollm_router: str) -> None:
    async with openai.AsyncOpenAI(base_url=smollm_router, api_key="unused", max_retries=0) as client:
        answer = await client.chat.completions.create(model="large", messages=FRANCE, temperature=0)
        assert "Paris" in (answer.choices[0].message.content or "")

        stream = await client.chat.completions.create(model="small", messages=FRANCE, temperature=0, stream=True)
        assert "Paris" in "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

        called = await client.chat.completions.create(
            model="large",
            messages=ASK_WEATHER,
            tools=[WEATHER],
            tool_choice="required",
            temperature=0,  # type: ignore[arg-type]
        )
        call = (called.choices[0].message.tool_calls or [])[0]
        check_weather_call(call.function.name, call.function.arguments)  # type: ignore[union-attr]

        parsed = await client.chat.completions.parse(
            model="large",
            messages=ASK_PERSON,
            response_format=Person,
            temperature=0,  # type: ignore[arg-type]
        )
        assert isinstance(parsed.choices[0].message.parsed, Person)
