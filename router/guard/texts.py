"""Every piece of client text a request carries, for the input rails: each message's content whatever its role
(system, developer, user, assistant, tool, function), a message's `name`, the arguments of assistant
`tool_calls` and `function_call`, and so an assistant prefill too. A client writes all of it; an injection can
sit in any of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from router.wire.protocol import ChatCompletionRequest, ChatMessage


@dataclass(frozen=True, slots=True)
class ClientText:
    text: str
    where: str
    """Where it came from, for logs and reports: `messages[2].content` (system), `messages[3].tool_calls[0]`..."""


def client_texts(request: ChatCompletionRequest) -> list[ClientText]:
    """The request's client text, in message order; empty pieces left out."""
    found: list[ClientText] = []
    for i, message in enumerate(request.messages):
        found.extend(message_texts(message, f"messages[{i}]"))
    return found


def message_texts(message: ChatMessage, at: str) -> list[ClientText]:
    pieces = [ClientText(message.text(), f"{at}.content ({message.role})")]
    if isinstance(message.name, str):
        pieces.append(ClientText(message.name, f"{at}.name"))
    if isinstance(message.refusal, str):
        pieces.append(ClientText(message.refusal, f"{at}.refusal"))
    for key in ("tool_calls", "function_call"):
        raw = getattr(message, key)
        if isinstance(raw, msgspec.Raw):
            pieces.extend(ClientText(text, f"{at}.{key}{where}") for where, text in _call_texts(raw))
    return [piece for piece in pieces if piece.text.strip()]


def _call_texts(raw: msgspec.Raw) -> list[tuple[str, str]]:
    """The function names and arguments of `tool_calls` (a list) or a `function_call` (one object)."""
    try:
        value: Any = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return [("", bytes(raw).decode("utf-8", "replace"))]  # not JSON: still client text
    calls = value if isinstance(value, list) else [value]
    texts: list[tuple[str, str]] = []
    for n, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else {}
        prefix = f"[{n}]" if isinstance(value, list) else ""
        for key in ("name", "arguments"):
            part = function.get(key) if isinstance(function, dict) else None
            if isinstance(part, str):
                texts.append((f"{prefix}.{key}", part))
            elif part is not None:
                texts.append((f"{prefix}.{key}", msgspec.json.encode(part).decode()))
    return texts


def joined(request: ChatCompletionRequest) -> str:
    """All of it as one text, pieces separated by blank lines (what NeMo's flows read as the user message)."""
    return "\n\n".join(piece.text for piece in client_texts(request))
