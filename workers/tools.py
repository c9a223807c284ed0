"""Tools and structured output on a worker: what a request asks for (`tools`, `tool_choice`, `response_format`),
the messages as the chat template sees them, and tool calls parsed out of the generated text.

Tool calls use the Hermes/Qwen format, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. A model whose
chat template renders `tools` itself (Qwen2.5) gets them that way; any other (SmolLM2) gets `FALLBACK_TOOL_PROMPT`
as a system message, its history's tool calls written into assistant turns and tool results into user turns
inside `<tool_response>` tags.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from router.wire.errors import InvalidRequest
from router.wire.protocol import ChatCompletionRequest, ChatMessage, Delta, ResponseMessage
from workers.grammar import GrammarCompiler, GrammarError, TokenConstraint, ToolSpec

FALLBACK_TOOL_PROMPT = """You may call functions to answer. The functions, as JSON schemas, are:
<tools>
{tools}
</tools>
To call one, answer with a JSON object of its name and arguments inside <tool_call></tool_call> tags:
<tool_call>
{{"name": <function-name>, "arguments": <arguments-object>}}
</tool_call>"""

CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
OPEN = "<tool_call>"


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str


class ToolCall(msgspec.Struct):
    id: str
    function: FunctionCall
    type: str = "function"


class ToolMessage(ResponseMessage):
    """The answer's message with the tool calls it makes (omitted when it makes none)."""

    tool_calls: list[ToolCall] | UnsetType = UNSET


class FunctionDelta(msgspec.Struct, omit_defaults=True):
    name: str | UnsetType = UNSET
    arguments: str | UnsetType = UNSET


class ToolCallDelta(msgspec.Struct, omit_defaults=True):
    index: int
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: FunctionDelta | UnsetType = UNSET


class ToolDelta(Delta, omit_defaults=True):
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET


@dataclass
class ToolPlan:
    """What one request asks of the worker beyond plain chat."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    """The tools rendered into the prompt (none for `tool_choice: "none"`)."""
    forced: list[ToolSpec] | None = None
    """`tool_choice` "required" or a named function: the answer is one call to one of these."""
    schema: dict[str, Any] | None = None
    """`response_format`: the answer is JSON for this schema."""

    @property
    def parses_calls(self) -> bool:
        return bool(self.tools)

    @property
    def constrained(self) -> bool:
        """The answer is grammar-constrained: a forced tool call or a `response_format` schema."""
        return bool(self.forced) or self.schema is not None

    def constraint(self, compiler: GrammarCompiler) -> TokenConstraint | None:
        try:
            if self.forced:
                return compiler.tool_call(self.forced)
            if self.schema is not None and self.tools:
                return compiler.call_or_json([_spec(t["function"]) for t in self.tools], self.schema)
            if self.schema is not None:
                return compiler.json_schema(self.schema)
        except GrammarError as exc:
            param = "tools" if self.forced else "response_format"
            raise InvalidRequest(f"cannot enforce this schema: {exc}", param=param) from exc
        return None


def plan_for(chat: ChatCompletionRequest) -> ToolPlan:
    tools = _decode(chat.tools, "tools") or []
    if not isinstance(tools, list) or not all(_is_function_tool(t) for t in tools):
        raise InvalidRequest("tools must be a list of {type: function, function: {name, parameters}}", param="tools")
    choice = _decode(chat.tool_choice, "tool_choice") or ("auto" if tools else "none")
    plan = ToolPlan()
    functions = [t["function"] for t in tools]
    specs = {f["name"]: _spec(f) for f in functions}
    if choice == "none":
        pass
    elif choice in ("auto", "required"):
        if choice == "required" and not tools:
            raise InvalidRequest('tool_choice "required" needs tools', param="tool_choice")
        plan.tools = tools
        plan.forced = list(specs.values()) if choice == "required" else None
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in specs:
            raise InvalidRequest(f"tool_choice names {name!r}, which is not among tools", param="tool_choice")
        plan.tools, plan.forced = tools, [specs[name]]
    else:
        raise InvalidRequest('tool_choice must be "none", "auto", "required" or a named function', param="tool_choice")
    plan.schema = _schema(_decode(chat.response_format, "response_format"))
    return plan


def _spec(function: dict[str, Any]) -> ToolSpec:
    return ToolSpec(function["name"], function.get("parameters") or {})


def _decode(raw: Any, param: str) -> Any:
    if raw is UNSET:
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"{param} is not valid JSON", param=param) from exc


def _is_function_tool(tool: Any) -> bool:
    return (
        isinstance(tool, dict)
        and tool.get("type", "function") == "function"
        and isinstance(tool.get("function"), dict)
        and isinstance(tool["function"].get("name"), str)
    )


def _schema(response_format: Any) -> dict[str, Any] | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("schema", {}), dict):
            schema: dict[str, Any] = spec.get("schema") or {"type": "object"}
            return schema
    raise InvalidRequest(
        "response_format must be {type: text | json_object | json_schema, json_schema: {name, schema, strict}}",
        param="response_format",
    )


def supports_tools(tokenizer: Any) -> bool:
    """Does the model's chat template render `tools` itself (Qwen2.5 does, SmolLM2 does not)?"""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tools" in template


def template_messages(messages: list[ChatMessage], plan: ToolPlan, native: bool) -> list[dict[str, Any]]:
    """The messages as the chat template takes them, the tool history kept."""
    out: list[dict[str, Any]] = []
    if plan.tools and not native:
        listing = "\n".join(json.dumps(t["function"]) for t in plan.tools)
        out.append({"role": "system", "content": FALLBACK_TOOL_PROMPT.format(tools=listing)})
    for message in messages:
        calls = _history_calls(message)
        if message.role == "tool":
            if native:
                out.append({"role": "tool", "content": message.text()})
            else:
                out.append({"role": "user", "content": f"<tool_response>\n{message.text()}\n</tool_response>"})
        elif calls and native:
            out.append({"role": "assistant", "content": message.text(), "tool_calls": calls})
        elif calls:
            written = "\n".join(f"{OPEN}\n{json.dumps(c['function'])}\n</tool_call>" for c in calls)
            out.append({"role": "assistant", "content": "\n".join(p for p in (message.text(), written) if p)})
        else:
            out.append({"role": message.role, "content": message.text()})
    return out


def _history_calls(message: ChatMessage) -> list[dict[str, Any]]:
    if message.role != "assistant" or message.tool_calls is UNSET:
        return []
    calls = msgspec.json.decode(message.tool_calls) or []
    written = []
    for call in calls:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        arguments = function.get("arguments", "{}")
        with contextlib.suppress(json.JSONDecodeError):  # templates take the arguments as an object
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        written.append({"type": "function", "function": {"name": function.get("name", ""), "arguments": arguments}})
    return written


def parse_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """The text around the tool calls (None when empty), and the calls that parse; a block that does not parse
    stays in the text."""
    calls: list[ToolCall] = []
    kept: list[str] = []
    last = 0
    for match in CALL.finditer(text):
        call = _call(match.group(1))
        if call is None:
            continue
        kept.append(text[last : match.start()])
        last = match.end()
        calls.append(call)
    kept.append(text[last:])
    content = "".join(kept).strip() if calls else text
    return (content or None), calls


def _call(body: str) -> ToolCall | None:
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(_call_id(), FunctionCall(value["name"], text))


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallStream:
    """Splits streamed text into content deltas and OpenAI tool-call deltas: text that may begin `<tool_call>`
    is held back; a call is sent as a delta with its index, id and name, then its arguments in fragments.

    A call the grammar forces (`incremental`) is well-formed by construction, so its head goes out as soon as its
    name is known and its arguments as they are generated, as OpenAI streams them. A free (`auto`) call is sent
    once its block is complete and parses: until then it may still turn out to be text."""

    FRAGMENT = 16

    def __init__(self, *, incremental: bool = False) -> None:
        self._buffer = ""
        self.calls = 0
        self._incremental = incremental
        self._arguments: ArgumentScanner | None = None
        """The forced call whose arguments are being streamed, if any."""

    def push(self, text: str) -> list[Delta]:
        self._buffer += text
        out: list[Delta] = []
        while True:
            if self._arguments is not None:
                if not self._stream_arguments(out):
                    return out
                continue
            start = self._buffer.find(OPEN)
            if start < 0:
                keep = _partial_open(self._buffer)
                safe, self._buffer = self._buffer[: len(self._buffer) - keep], self._buffer[len(self._buffer) - keep :]
                if safe:
                    out.append(Delta(content=safe))
                return out
            if start > 0:
                out.append(Delta(content=self._buffer[:start]))
                self._buffer = self._buffer[start:]
            if self._incremental:
                head = FORCED_HEAD.match(self._buffer)
                if head is None:
                    return out
                self._buffer = self._buffer[head.end() :]
                out.append(self._head(ToolCall(_call_id(), FunctionCall(json.loads(f'"{head.group(1)}"'), ""))))
                self._arguments = ArgumentScanner()
                continue
            end = self._buffer.find("</tool_call>")
            if end < 0:
                return out
            block = self._buffer[: end + len("</tool_call>")]
            self._buffer = self._buffer[len(block) :].lstrip("\n")
            _, calls = parse_calls(block)
            if not calls:
                out.append(Delta(content=block))
                continue
            out.extend(self._deltas(calls[0]))

    def finish(self) -> list[Delta]:
        """Whatever is held back at the end (an unfinished free call stays text; a forced call's arguments cut
        short by max_tokens are sent as they are, as OpenAI does at finish_reason length)."""
        rest, self._buffer = self._buffer, ""
        if self._arguments is not None:
            self._arguments = None
            return [self._fragment(rest)] if rest else []
        return [Delta(content=rest)] if rest else []

    def _stream_arguments(self, out: list[Delta]) -> bool:
        """Send what the buffer holds of the current call's arguments; True once they (and the call) ended."""
        assert self._arguments is not None
        taken = 0 if self._arguments.done else self._arguments.feed(self._buffer)
        if taken:
            out.append(self._fragment(self._buffer[:taken]))
            self._buffer = self._buffer[taken:]
        if not self._arguments.done:
            return False
        tail = FORCED_TAIL.match(self._buffer)
        if tail is None:
            return False  # the closing `}` and `</tool_call>` are still to come
        self._buffer = self._buffer[tail.end() :]
        self._arguments = None
        return True

    def _head(self, call: ToolCall) -> ToolDelta:
        index, self.calls = self.calls, self.calls + 1
        return ToolDelta(tool_calls=[ToolCallDelta(index, call.id, "function", FunctionDelta(call.function.name, ""))])

    def _fragment(self, arguments: str) -> ToolDelta:
        return ToolDelta(tool_calls=[ToolCallDelta(self.calls - 1, function=FunctionDelta(arguments=arguments))])

    def _deltas(self, call: ToolCall) -> list[Delta]:
        deltas: list[Delta] = [self._head(call)]
        arguments = call.function.arguments
        for at in range(0, len(arguments), self.FRAGMENT):
            deltas.append(self._fragment(arguments[at : at + self.FRAGMENT]))
        return deltas


FORCED_HEAD = re.compile(r'<tool_call>\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
"""The start of a grammar-forced call, up to its arguments (the grammar writes the name first)."""
FORCED_TAIL = re.compile(r"\s*\}\s*</tool_call>\n?")


class ArgumentScanner:
    """Finds where a JSON value (a call's arguments object) ends in text that arrives in pieces."""

    def __init__(self) -> None:
        self.depth = 0
        self.done = False
        self._string = False
        self._escaped = False

    def feed(self, text: str) -> int:
        """How many characters of `text` belong to the value (all of them until it ends)."""
        for at, char in enumerate(text):
            if self._string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._string = False
            elif char == '"':
                self._string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return at + 1
        return len(text)


def _partial_open(text: str) -> int:
    """How many characters at the end of `text` could be the start of `<tool_call>`."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0
