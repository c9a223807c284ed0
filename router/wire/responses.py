"""The stateless Responses API wire format (`POST /v1/responses`), and its translation to and from chat.

A request becomes a chat request: `instructions` a system message, `input` messages (text parts joined),
`function_call` items assistant `tool_calls`, `function_call_output` items `tool` messages, function `tools` chat
tools, `text.format` a `response_format`. The chat answer becomes a `response` object with a `message` item and a
`function_call` item per tool call. Nothing is stored: `previous_response_id`, `store: true`, `background: true`,
`conversation` and `prompt` are 400s naming the field, as are input items and tools of other types.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, UnsetType

from router.wire.errors import InvalidRequest
from router.wire.protocol import ChatCompletionRequest, ChatMessage, MaxTokens, StreamOptions, Temperature, TopP, encode

TEXT_PARTS = ("input_text", "output_text", "text", "refusal")


class InputPart(msgspec.Struct):
    type: str
    text: str | UnsetType = UNSET
    refusal: str | UnsetType = UNSET


class InputItem(msgspec.Struct):
    """One input item, read loosely (a message may leave out `type`); `to_chat` names what it cannot take."""

    type: str = "message"
    role: str | UnsetType = UNSET
    content: str | list[InputPart] | UnsetType = UNSET
    call_id: str | UnsetType = UNSET
    name: str | UnsetType = UNSET
    arguments: str | UnsetType = UNSET
    output: str | list[InputPart] | UnsetType = UNSET
    id: str | UnsetType | None = UNSET


class FunctionTool(msgspec.Struct, tag_field="type", tag="function"):
    """A function tool, as the request gives it and the response echoes it."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class AnyTool(msgspec.Struct):
    type: str
    name: str | UnsetType = UNSET
    description: str | UnsetType | None = UNSET
    parameters: dict[str, Any] | UnsetType | None = UNSET
    strict: bool | UnsetType | None = UNSET


class TextFormat(msgspec.Struct, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | UnsetType = UNSET
    schema: dict[str, Any] | UnsetType = UNSET
    description: str | UnsetType = UNSET
    strict: bool | UnsetType | None = UNSET


class TextConfig(msgspec.Struct):
    format: TextFormat | None = None
    verbosity: str | None = None
    """Only "medium" (what every model here does) is accepted; another is a 400, never silently ignored."""


class ResponsesRequest(msgspec.Struct, omit_defaults=True):
    """`POST /v1/responses`; unknown fields are ignored, as OpenAI does."""

    input: str | Annotated[list[InputItem], Meta(min_length=1)]
    model: str = "auto"
    instructions: str | UnsetType | None = UNSET
    tools: list[AnyTool] | UnsetType | None = UNSET
    tool_choice: str | dict[str, Any] | UnsetType | None = UNSET
    parallel_tool_calls: bool | UnsetType | None = UNSET
    max_output_tokens: MaxTokens | UnsetType | None = UNSET
    temperature: Temperature | UnsetType | None = UNSET
    top_p: TopP | UnsetType | None = UNSET
    stream: bool = False
    text: TextConfig | UnsetType | None = UNSET
    user: str | UnsetType = UNSET
    metadata: dict[str, str] | UnsetType | None = UNSET
    previous_response_id: str | UnsetType | None = UNSET
    store: bool | UnsetType | None = UNSET
    background: bool | UnsetType | None = UNSET
    conversation: Raw | UnsetType | None = UNSET
    prompt: Raw | UnsetType | None = UNSET
    reasoning: Raw | UnsetType | None = UNSET
    include: list[str] | UnsetType | None = UNSET
    truncation: str | UnsetType | None = UNSET
    top_logprobs: int | UnsetType | None = UNSET
    max_tool_calls: int | UnsetType | None = UNSET

    def function_tools(self) -> list[FunctionTool]:
        tools = []
        for index, tool in enumerate(self.tools or []):
            if tool.type != "function" or not isinstance(tool.name, str):
                raise InvalidRequest(
                    f"tools[{index}] is a '{tool.type}' tool; only function tools (with a name) are served",
                    param=f"tools[{index}].type",
                )
            description = tool.description if isinstance(tool.description, str) else None
            parameters = tool.parameters if isinstance(tool.parameters, dict) else None
            strict = tool.strict if isinstance(tool.strict, bool) else None
            tools.append(FunctionTool(tool.name, description, parameters, strict))
        return tools

    def to_chat(self) -> ChatCompletionRequest:
        """The chat request this response is served as; a 400 naming whatever needs state or is not served."""
        self._refuse_stateful()
        messages = [ChatMessage(role="system", content=self.instructions)] if self.instructions else []
        if isinstance(self.input, str):
            messages.append(ChatMessage(role="user", content=self.input))
        else:
            messages.extend(_chat_messages(self.input))
        tools = self.function_tools()
        chat_tools = [
            {"type": "function", "function": {k: v for k, v in msgspec.structs.asdict(t).items() if v is not None}}
            for t in tools
        ]
        return ChatCompletionRequest(
            messages=messages,
            model=self.model,
            stream=self.stream,
            stream_options=StreamOptions(include_usage=True) if self.stream else UNSET,
            max_tokens=self.max_output_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            user=self.user,
            tools=Raw(encode(chat_tools)) if chat_tools else UNSET,
            tool_choice=self._chat_tool_choice(),
            parallel_tool_calls=self.parallel_tool_calls if isinstance(self.parallel_tool_calls, bool) else UNSET,
            response_format=self._response_format(),
        )

    def _refuse_unserved(self) -> None:
        """Parameters this endpoint does not honour are a 400 naming them, unless they ask for the default."""
        text = self.text if isinstance(self.text, TextConfig) else None
        for field, value, default in (
            ("reasoning", None if self.reasoning in (UNSET, None) else bytes(self.reasoning), (None, b"null", b"{}")),
            ("include", self.include or None, (None,)),
            ("truncation", self.truncation, (UNSET, None, "disabled")),
            ("top_logprobs", self.top_logprobs, (UNSET, None, 0)),
            ("max_tool_calls", self.max_tool_calls, (UNSET, None)),
            ("text.verbosity", text.verbosity if text else None, (None, "medium")),
        ):
            if value not in default:
                raise InvalidRequest(f"{field} is not supported by this router's /v1/responses", param=field)

    def _refuse_stateful(self) -> None:
        self._refuse_unserved()
        for field, value in (
            ("previous_response_id", self.previous_response_id),
            ("store", self.store),
            ("background", self.background),
            ("conversation", self.conversation),
            ("prompt", self.prompt),
        ):
            if value not in (UNSET, None, False):
                raise InvalidRequest(
                    f"{field} is not supported: this router's /v1/responses is stateless and stores nothing "
                    "(send the whole conversation as input, and store: false)",
                    param=field,
                )

    def _chat_tool_choice(self) -> Raw | UnsetType:
        choice = self.tool_choice
        if choice in (UNSET, None):
            return UNSET
        if isinstance(choice, str):
            if choice not in ("auto", "none", "required"):
                raise InvalidRequest(f"tool_choice '{choice}' is not one of auto, none, required", param="tool_choice")
            return Raw(encode(choice))
        if choice.get("type") == "function" and isinstance(choice.get("name"), str):
            return Raw(encode({"type": "function", "function": {"name": choice["name"]}}))
        raise InvalidRequest("tool_choice may only name a function tool", param="tool_choice")

    def _response_format(self) -> Raw | UnsetType:
        if not isinstance(self.text, TextConfig) or self.text.format is None or self.text.format.type == "text":
            return UNSET
        fmt = self.text.format
        if fmt.type == "json_object":
            return Raw(b'{"type":"json_object"}')
        schema = {k: v for k, v in msgspec.structs.asdict(fmt).items() if k != "type" and v is not UNSET}
        return Raw(encode({"type": "json_schema", "json_schema": schema}))


def _text(content: str | list[InputPart] | UnsetType, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, UnsetType):
        raise InvalidRequest(f"{where} has no content", param=where)
    texts = []
    for index, part in enumerate(content):
        text = part.text if isinstance(part.text, str) else part.refusal
        if part.type not in TEXT_PARTS or not isinstance(text, str):
            raise InvalidRequest(
                f"{where}.content[{index}] is '{part.type}'; only text parts are served", param=f"{where}.content"
            )
        texts.append(text)
    return "\n".join(texts)


def _chat_messages(items: list[InputItem]) -> list[ChatMessage]:
    """Input items as chat messages; consecutive `function_call` items become one assistant message."""
    messages: list[ChatMessage] = []
    calls: list[dict[str, Any]] = []

    def flush_calls() -> None:
        if calls:
            messages.append(ChatMessage(role="assistant", content=None, tool_calls=Raw(encode(list(calls)))))
            calls.clear()

    for index, item in enumerate(items):
        where = f"input[{index}]"
        if item.type == "function_call":
            if not (isinstance(item.call_id, str) and isinstance(item.name, str)):
                raise InvalidRequest(f"{where} needs call_id and name", param=where)
            arguments = item.arguments if isinstance(item.arguments, str) else "{}"
            calls.append(
                {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": arguments}}
            )
            continue
        flush_calls()
        if item.type == "function_call_output":
            if not isinstance(item.call_id, str):
                raise InvalidRequest(f"{where} needs call_id", param=where)
            output = _text(item.output, where) if not isinstance(item.output, UnsetType) else ""
            messages.append(ChatMessage(role="tool", content=output, tool_call_id=item.call_id))
        elif item.type == "message":
            if item.role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(f"{where}.role must be user, assistant, system or developer", param=where)
            messages.append(ChatMessage(role=item.role, content=_text(item.content, where)))  # type: ignore[arg-type]
        else:
            raise InvalidRequest(
                f"{where} is a '{item.type}' item; message, function_call and function_call_output are served",
                param=f"{where}.type",
            )
    flush_calls()
    return messages


class OutputText(msgspec.Struct, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputMessage(msgspec.Struct, tag_field="type", tag="message"):
    id: str
    status: str
    content: list[OutputText]
    role: Literal["assistant"] = "assistant"


class FunctionCall(msgspec.Struct, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)


class IncompleteDetails(msgspec.Struct):
    reason: str


class ResponseError(msgspec.Struct):
    code: str
    message: str


class ResponseObject(msgspec.Struct):
    """A `response` object: the whole answer, or the in-progress one that stream events carry."""

    id: str
    created_at: int
    model: str
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    output: list[OutputMessage | FunctionCall]
    tools: list[FunctionTool]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    temperature: float | None
    top_p: float | None
    max_output_tokens: int | None
    instructions: str | None
    metadata: dict[str, str]
    usage: ResponseUsage | None = None
    incomplete_details: IncompleteDetails | None = None
    error: ResponseError | None = None
    object: Literal["response"] = "response"


def new_response(request: ResponsesRequest, model: str, created: int | None = None) -> ResponseObject:
    """An empty, in-progress response echoing the request's settings (filled in as the answer comes)."""
    tool_choice = request.tool_choice if isinstance(request.tool_choice, (str, dict)) else "auto"
    return ResponseObject(
        id=f"resp_{uuid.uuid4().hex}",
        created_at=int(time.time()) if created is None else created,
        model=model,
        status="in_progress",
        output=[],
        tools=request.function_tools(),
        tool_choice=tool_choice,
        parallel_tool_calls=request.parallel_tool_calls is not False,
        temperature=_float(request.temperature),
        top_p=_float(request.top_p),
        max_output_tokens=request.max_output_tokens if isinstance(request.max_output_tokens, int) else None,
        instructions=request.instructions if isinstance(request.instructions, str) else None,
        metadata=request.metadata if isinstance(request.metadata, dict) else {},
    )


def finish(response: ResponseObject, finish_reason: str | None, usage: ResponseUsage | None) -> None:
    """Mark a response done: `incomplete` when the answer was cut at the token limit (`max_output_tokens`) or
    replaced by a guardrail's refusal (`content_filter`), as OpenAI marks them."""
    response.usage = usage
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(finish_reason or "")
    if reason is not None:
        response.status, response.incomplete_details = "incomplete", IncompleteDetails(reason)
    else:
        response.status = "completed"


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _float(value: float | UnsetType | None) -> float | None:
    return value if isinstance(value, float | int) else None


def decode_responses_request(body: bytes) -> ResponsesRequest:
    return _REQUEST_DECODER.decode(body)


_REQUEST_DECODER = msgspec.json.Decoder(ResponsesRequest)
