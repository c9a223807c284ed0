"""Decoding a request body, every problem turned into a 400 that names the field."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec
from msgspec import UNSET, Raw

from router.wire.errors import InvalidRequest
from router.wire.protocol import ChatCompletionRequest, decode_chat_request

T = TypeVar("T")

INT_RANGE = (-(2**63), 2**63 - 1)
"""Integers any upstream can read (a JSON int64). Bigger ones, or floats beyond a double, are a 400 here, also in
the fields passed through verbatim (tools, metadata...), instead of a crash further up the chain."""


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate a chat request, turning every decoding problem into a 400 naming the field."""
    request = parse_body(body, decode_chat_request, "chat completion request")
    if request.top_logprobs not in (None, UNSET) and request.logprobs is not True:
        raise InvalidRequest("'top_logprobs' needs 'logprobs' set to true", param="top_logprobs")
    for param, raw in _raw_fields(request):
        check_numbers(raw, param)
    return request


def check_numbers(raw: Raw, param: str) -> None:
    """A 400 naming `param` if the JSON in `raw` holds a number no upstream can take."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.ValidationError as exc:  # a float beyond a double ("Number out of range")
        raise InvalidRequest(f"{str(exc).partition(' - at')[0]} at '{param}'", param=param) from exc
    stack = [value]
    low, high = INT_RANGE
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and not low <= item <= high:
            raise InvalidRequest(f"Integer value out of range at '{param}'", param=param)


def _raw_fields(request: ChatCompletionRequest) -> Iterator[tuple[str, Raw]]:
    for name in ("logit_bias", "tools", "tool_choice", "response_format", "metadata"):
        value: Any = getattr(request, name)
        if isinstance(value, Raw):
            yield name, value
    for i, message in enumerate(request.messages):
        for name in ("tool_calls", "function_call"):
            value = getattr(message, name)
            if isinstance(value, Raw):
                yield f"messages[{i}].{name}", value
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                for name in ("image_url", "input_audio", "file"):
                    value = getattr(part, name)
                    if isinstance(value, Raw):
                        yield f"messages[{i}].content[{j}].{name}", value


def parse_body(body: bytes, decode: Callable[[bytes], T], what: str) -> T:
    """Decode and validate a request body with `decode`, every decoding problem a 400 naming the field."""
    if not body.strip():
        raise InvalidRequest(f"the request body is empty; expected a JSON {what}")
    try:
        return decode(body)
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid UTF-8 (byte {exc.start})") from exc
    except msgspec.ValidationError as exc:
        reason, _, where = str(exc).partition(" - at `$")
        param = where.rstrip("`").lstrip(".") or None
        raise InvalidRequest(f"{reason}" + (f" at '{param}'" if param else ""), param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # msgspec walks nested JSON recursively, even what it keeps as Raw
        raise InvalidRequest("the request body nests JSON too deeply") from exc
