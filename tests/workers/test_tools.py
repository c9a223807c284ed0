"""Tool calls in and out of the prompt, without a model: the fallback rendering of tools and their history, and
Hermes-style `<tool_call>` blocks parsed into OpenAI tool calls, whole and streamed in arbitrary pieces."""

from __future__ import annotations

import json

import msgspec
import pytest

from router.wire.protocol import ChatCompletionRequest, decode_chat_request
from workers.tools import ToolCallStream, ToolDelta, parse_calls, plan_for, template_messages

TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": "two"}}\n</tool_call>'


def request(**body: object) -> ChatCompletionRequest:
    return decode_chat_request(msgspec.json.encode({"messages": [{"role": "user", "content": "hi"}], **body}))


def test_calls_are_parsed_out_of_the_text_and_a_broken_one_stays_text() -> None:
    content, calls = parse_calls(f"Let me add.\n{CALL}")
    assert content == "Let me add." and len(calls) == 1
    assert calls[0].id.startswith("call_") and calls[0].function.name == "add"
    assert json.loads(calls[0].function.arguments) == {"a": 1, "b": "two"}
    assert parse_calls(CALL)[0] is None
    broken = "<tool_call>{not json</tool_call>"
    assert parse_calls(broken) == (broken, [])


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_a_streamed_call_is_a_head_delta_then_argument_fragments(piece: int) -> None:
    text = f"Sure <tool! {CALL} done"
    stream = ToolCallStream()
    deltas = [d for at in range(0, len(text), piece) for d in stream.push(text[at : at + piece])] + stream.finish()
    content = "".join(d.content for d in deltas if isinstance(d.content, str))
    assert content == "Sure <tool!  done"
    calls = [c for d in deltas if isinstance(d, ToolDelta) and d.tool_calls for c in d.tool_calls]
    head, fragments = calls[0], calls[1:]
    assert head.index == 0 and isinstance(head.id, str) and head.id.startswith("call_") and head.type == "function"
    assert fragments and all(f.index == 0 and f.id is msgspec.UNSET for f in fragments)
    arguments = "".join(f.function.arguments for f in fragments if not isinstance(f.function, msgspec.UnsetType))
    assert json.loads(arguments) == {"a": 1, "b": "two"} and stream.calls == 1


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_a_forced_call_streams_its_arguments_as_they_are_generated(piece: int) -> None:
    """The grammar wrote it, so it needs no parsing first: the head as soon as the name is out, then arguments."""
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": "t}w\\"o", "c": [{"d": 2}]}}\n</tool_call>'
    stream = ToolCallStream(incremental=True)
    middle = text.index('"t}w')
    early = [d for at in range(0, middle, piece) for d in stream.push(text[at : min(at + piece, middle)])]
    late = [d for at in range(middle, len(text), piece) for d in stream.push(text[at : at + piece])] + stream.finish()
    assert not any(isinstance(d.content, str) and d.content for d in early + late), "nothing of it is content"
    calls = [c for d in early + late if isinstance(d, ToolDelta) and d.tool_calls for c in d.tool_calls]
    head = calls[0]
    assert head.id is not msgspec.UNSET and not isinstance(head.function, msgspec.UnsetType)
    assert head.function.name == "add" and head.function.arguments == ""
    sent_early = [c for d in early if isinstance(d, ToolDelta) and d.tool_calls for c in d.tool_calls]
    assert sent_early[0] is head and len(sent_early) >= 2, "the head and part of the arguments before the end"
    arguments = "".join(
        c.function.arguments
        for c in calls[1:]
        if not isinstance(c.function, msgspec.UnsetType) and c.function.arguments
    )
    assert json.loads(arguments) == {"a": 1, "b": 't}w"o', "c": [{"d": 2}]} and stream.calls == 1


def test_the_fallback_prompt_lists_the_tools_and_keeps_the_tool_history() -> None:
    chat = request(
        tools=[TOOL],
        messages=[
            {"role": "user", "content": "add 1 and 2"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "3"},
        ],
    )
    plan = plan_for(chat)
    rendered = template_messages(chat.messages, plan, native=False)
    assert rendered[0]["role"] == "system" and '"name": "add"' in rendered[0]["content"]
    assert rendered[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>',
    }
    assert rendered[3] == {"role": "user", "content": "<tool_response>\n3\n</tool_response>"}
    native = template_messages(chat.messages, plan, native=True)
    assert native[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1} and native[2]["role"] == "tool"
    assert (
        template_messages(chat.messages, plan_for(request(tools=[TOOL], tool_choice="none")), native=False)[0]["role"]
        == "user"
    )


def test_tool_choice_decides_what_is_forced() -> None:
    assert plan_for(request(tools=[TOOL])).forced is None
    assert [t.name for t in plan_for(request(tools=[TOOL], tool_choice="required")).forced or []] == ["add"]
    named = plan_for(request(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "add"}}))
    assert named.forced is not None and named.forced[0].name == "add"
    assert plan_for(request(tools=[TOOL], tool_choice="none")).tools == []
    assert plan_for(request(response_format={"type": "json_object"})).schema == {"type": "object"}
