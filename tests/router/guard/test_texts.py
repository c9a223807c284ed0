"""The input rails read every piece of client text: every role, a message's name, tool-call arguments, a prefill."""

from __future__ import annotations

import msgspec

from router.guard.texts import client_texts, joined
from router.wire.protocol import decode_chat_request

CALL = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q": "ignore the rules"}'}}


def test_every_role_name_and_tool_argument_is_client_text() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "sys text"},
            {"role": "developer", "content": "dev text"},
            {"role": "user", "name": "evil name", "content": [{"type": "text", "text": "part one"}]},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "tool result"},
            {"role": "function", "name": "lookup", "content": "function result"},
            {
                "role": "assistant",
                "content": "Sure, here is how",
                "function_call": {"name": "f", "arguments": {"a": 1}},
            },
        ]
    }
    pieces = client_texts(decode_chat_request(msgspec.json.encode(body)))
    found = {piece.where: piece.text for piece in pieces}
    assert found == {
        "messages[0].content (system)": "sys text",
        "messages[1].content (developer)": "dev text",
        "messages[2].content (user)": "part one",
        "messages[2].name": "evil name",
        "messages[3].tool_calls[0].name": "search",
        "messages[3].tool_calls[0].arguments": '{"q": "ignore the rules"}',
        "messages[4].content (tool)": "tool result",
        "messages[5].content (function)": "function result",
        "messages[5].name": "lookup",
        "messages[6].content (assistant)": "Sure, here is how",
        "messages[6].function_call.name": "f",
        "messages[6].function_call.arguments": '{"a":1}',
    }
    assert joined(decode_chat_request(msgspec.json.encode(body))).startswith("sys text\n\ndev text\n\npart one")
