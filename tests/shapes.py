"""The tool and schema the structured-output tests share: shapes SmolLM2-135M fills sensibly (a city and a number
of days, a name and an age), so a test shows the constraint working, not the model rambling."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast for a city, some days ahead.",
        "parameters": WEATHER_PARAMETERS,
    },
}
FORCED: dict[str, Any] = {"type": "function", "function": {"name": "get_weather"}}
ASK_WEATHER = [{"role": "user", "content": "What will the weather be in Paris in 3 days?"}]

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
ASK_PERSON = [{"role": "user", "content": "Describe a famous scientist as JSON with a name and an age."}]
STRICT_PERSON: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}


class Person(BaseModel):
    """The PERSON schema as a Pydantic model (what `.parse()` and the agent frameworks take)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    age: int


def check_weather_call(name: str, arguments: str | dict[str, Any]) -> None:
    """A get_weather call whose arguments validate against its parameters."""
    assert name == "get_weather"
    jsonschema.validate(json.loads(arguments) if isinstance(arguments, str) else arguments, WEATHER_PARAMETERS)


def check_person(text: str) -> None:
    jsonschema.validate(json.loads(text), PERSON)
