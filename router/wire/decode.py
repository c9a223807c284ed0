"""Decoding a request body, every problem turned into a 400 that names the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec
from msgspec import UNSET

from router.wire.errors import InvalidRequest
from router.wire.protocol import ChatCompletionRequest, decode_chat_request

T = TypeVar("T")


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate a chat request, turning every decoding problem into a 400 naming the field."""
    request = parse_body(body, decode_chat_request, "chat completion request")
    if request.top_logprobs not in (None, UNSET) and request.logprobs is not True:
        raise InvalidRequest("'top_logprobs' needs 'logprobs' set to true", param="top_logprobs")
    return request


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
