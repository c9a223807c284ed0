"""Chat answers as Responses: a whole chat completion as a `response` object, and a chat stream as the Responses
event sequence (`response.created`, `response.in_progress`, output items with their text or argument deltas,
`response.completed`), each event framed as `event: <type>` plus `data: <json>`."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, Raw, UnsetType

from router.wire.protocol import ErrorBody, Usage, encode
from router.wire.responses import (
    FunctionCall,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponseUsage,
    finish,
    item_id,
)


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None
    delta: _Message | None = None
    finish_reason: str | None = None


class ChatIn(msgspec.Struct):
    """What is read out of a chat completion or chunk (other fields are dropped)."""

    model: str = ""
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    error: Raw | UnsetType = UNSET


def response_usage(usage: Usage | None) -> ResponseUsage | None:
    return None if usage is None else ResponseUsage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def response_from_chat(response: ResponseObject, body: bytes) -> bytes:
    """A whole chat completion as the finished `response` object."""
    chat = _DECODER.decode(body)
    choice = chat.choices[0] if chat.choices else _Choice()
    message = choice.message or _Message()
    response.model = chat.model or response.model
    if message.content or not message.tool_calls:
        text = OutputText(message.content or "")
        response.output.append(OutputMessage(item_id("msg"), "completed", [text]))
    for call in message.tool_calls or []:
        function = call.function or _Function()
        call_id = call.id or item_id("call")
        response.output.append(
            FunctionCall(item_id("fc"), call_id, function.name or "", function.arguments or "", "completed")
        )
    finish(response, choice.finish_reason, response_usage(chat.usage))
    return encode(response)


class ResponseEvents:
    """Turns the data of chat chunks, one at a time, into Responses events (whole SSE frames)."""

    def __init__(self, response: ResponseObject) -> None:
        self.response = response
        self._sequence = 0
        self._text: OutputMessage | None = None
        self._calls: dict[int, FunctionCall] = {}
        self._finish: str | None = None
        self._usage: Usage | None = None

    def start(self) -> list[bytes]:
        return [
            self._event("response.created", response=self.response),
            self._event("response.in_progress", response=self.response),
        ]

    def feed(self, data: bytes) -> list[bytes]:
        chat = _DECODER.decode(data)
        if not isinstance(chat.error, UnsetType):
            error = msgspec.json.decode(data, type=ErrorBody).error
            return self.fail(error.message, error.code, error.param)
        events: list[bytes] = []
        if chat.usage is not None:
            self._usage = chat.usage
        for choice in chat.choices:
            delta = choice.delta or _Message()
            if delta.content:
                events.extend(self._text_delta(delta.content))
            for call in delta.tool_calls or []:
                events.extend(self._call_delta(call))
            if choice.finish_reason:
                self._finish = choice.finish_reason
        return events

    def end(self) -> list[bytes]:
        """Close the open items and complete the response."""
        events = []
        if self._text is not None:
            events.extend(self._close_text(self._text))
        for call in self._calls.values():
            events.extend(self._close_call(call))
        finish(self.response, self._finish, response_usage(self._usage))
        kind = "response.completed" if self.response.status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=self.response))
        return events

    def _text_delta(self, text: str) -> list[bytes]:
        events = []
        if self._text is None:
            self._text = OutputMessage(item_id("msg"), "in_progress", [])
            index = self._add(self._text)
            events.append(self._event("response.output_item.added", output_index=index, item=self._text))
            part = OutputText("")
            events.append(self._event("response.content_part.added", **self._at(self._text), part=part))
            self._text.content.append(part)
        self._text.content[0].text += text
        events.append(self._event("response.output_text.delta", **self._at(self._text), delta=text, logprobs=[]))
        return events

    def _call_delta(self, delta: _ToolCall) -> list[bytes]:
        events = []
        function = delta.function or _Function()
        call = self._calls.get(delta.index)
        if call is None:
            call = FunctionCall(item_id("fc"), delta.id or item_id("call"), function.name or "", "", "in_progress")
            self._calls[delta.index] = call
            index = self._add(call)
            events.append(self._event("response.output_item.added", output_index=index, item=call))
        if function.arguments:
            call.arguments += function.arguments
            where = {"item_id": call.id, "output_index": self.response.output.index(call)}
            events.append(self._event("response.function_call_arguments.delta", **where, delta=function.arguments))
        return events

    def _close_text(self, message: OutputMessage) -> list[bytes]:
        part = message.content[0]
        message.status = "completed"
        return [
            self._event("response.output_text.done", **self._at(message), text=part.text, logprobs=[]),
            self._event("response.content_part.done", **self._at(message), part=part),
            self._event("response.output_item.done", output_index=self.response.output.index(message), item=message),
        ]

    def _close_call(self, call: FunctionCall) -> list[bytes]:
        call.status = "completed"
        index = self.response.output.index(call)
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=call.id,
                output_index=index,
                name=call.name,
                arguments=call.arguments,
            ),
            self._event("response.output_item.done", output_index=index, item=call),
        ]

    def fail(self, message: str, code: str | None, param: str | None = None) -> list[bytes]:
        """The stream broke (no tier could go on): an `error` event, then the response as `failed`."""
        self.response.status, self.response.error = "failed", ResponseError("server_error", message)
        return [
            self._event("error", code=code, message=message, param=param),
            self._event("response.failed", response=self.response),
        ]

    def _add(self, item: OutputMessage | FunctionCall) -> int:
        self.response.output.append(item)
        return len(self.response.output) - 1

    def _at(self, message: OutputMessage) -> dict[str, Any]:
        return {"item_id": message.id, "output_index": self.response.output.index(message), "content_index": 0}

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = encode({"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


_DECODER = msgspec.json.Decoder(ChatIn)
