"""The OpenAI chat-completions wire format, shared by the router and the workers.

Only msgspec here: this module must stay importable without torch or httpx.
Fields that the router never inspects but must pass through verbatim (tools,
response_format, logit_bias, ...) are kept as `msgspec.Raw`, so they cost no
decoding and are forwarded byte for byte.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, UnsetType

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool", "function")


class ContentPart(msgspec.Struct, omit_defaults=True):
    """One part of a multi-part message; only text parts are read by the router."""

    type: str
    text: str | UnsetType = UNSET
    image_url: Raw | UnsetType = UNSET
    input_audio: Raw | UnsetType = UNSET
    file: Raw | UnsetType = UNSET


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | UnsetType = UNSET
    tool_calls: Raw | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET
    function_call: Raw | UnsetType = UNSET
    refusal: str | UnsetType | None = UNSET

    def text(self) -> str:
        """The message's text: a plain string, or its text parts joined by newlines."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "\n".join(p.text for p in self.content if isinstance(p.text, str))


class StreamOptions(msgspec.Struct, omit_defaults=True):
    include_usage: bool | UnsetType = UNSET


Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
MaxTokens = Annotated[int, Meta(ge=1)]
StopList = Annotated[list[str], Meta(max_length=4)]
Choices = Annotated[int, Meta(ge=1, le=4)]
TopLogprobs = Annotated[int, Meta(ge=0, le=20)]


class ChatCompletionRequest(msgspec.Struct, omit_defaults=True):
    """`POST /v1/chat/completions`; unknown fields are ignored, as OpenAI does."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: str = "auto"
    stream: bool = False
    stream_options: StreamOptions | UnsetType | None = UNSET
    max_tokens: MaxTokens | UnsetType | None = UNSET
    max_completion_tokens: MaxTokens | UnsetType | None = UNSET
    temperature: Temperature | UnsetType | None = UNSET
    top_p: TopP | UnsetType | None = UNSET
    stop: str | StopList | UnsetType | None = UNSET
    seed: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | UnsetType | None = UNSET
    n: Choices | UnsetType | None = UNSET
    """How many completions (1-4); the workers run each as its own sequence of the batch."""
    user: str | UnsetType = UNSET
    presence_penalty: Penalty | UnsetType | None = UNSET
    frequency_penalty: Penalty | UnsetType | None = UNSET
    logit_bias: Raw | UnsetType = UNSET
    logprobs: bool | UnsetType | None = UNSET
    top_logprobs: TopLogprobs | UnsetType | None = UNSET
    """Needs `logprobs: true` (checked by `wire/decode.parse_chat_request`)."""
    tools: Raw | UnsetType = UNSET
    tool_choice: Raw | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET
    response_format: Raw | UnsetType = UNSET
    metadata: Raw | UnsetType = UNSET
    min_tokens: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    """vLLM's extension, honoured by our workers: no end-of-sequence before this many tokens."""
    ignore_eos: bool | UnsetType = UNSET
    """vLLM's extension: generate exactly max_tokens (benchmarks)."""
    continue_final_message: bool | UnsetType = UNSET
    """vLLM's extension, honoured by our workers: continue the final assistant message instead of starting
    a new turn (the router uses it to continue a stream another tier broke off)."""
    add_generation_prompt: bool | UnsetType = UNSET
    """vLLM's extension, sent along with `continue_final_message: true` (false); accepted, implied by it."""

    def token_limit(self) -> int | None:
        """The requested generation cap: `max_completion_tokens` wins over `max_tokens`."""
        for value in (self.max_completion_tokens, self.max_tokens):
            if isinstance(value, int):
                return value
        return None

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text()
        return ""

    def include_usage(self) -> bool:
        """Does a stream end with a usage chunk (`stream_options.include_usage`)?"""
        return bool(self.stream_options and self.stream_options.include_usage is True)

    def choices(self) -> int:
        return self.n if isinstance(self.n, int) else 1

    def wanted_logprobs(self) -> int:
        """-1 without `logprobs: true`; else how many alternatives per token (`top_logprobs`, 0 when absent)."""
        if self.logprobs is not True:
            return -1
        return self.top_logprobs if isinstance(self.top_logprobs, int) else 0

    def has_tools(self) -> bool:
        return self.tools is not UNSET and bytes(self.tools) not in (b"null", b"[]")

    def has_response_format(self) -> bool:
        return self.response_format is not UNSET and bytes(self.response_format) != b"null"


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(msgspec.Struct):
    """The answer's message: `role`, `content` and `refusal` are always present (null when empty), as OpenAI's
    schema requires them (clients such as LangChain reject a message without its role)."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(msgspec.Struct):
    """One generated token's entry of `choices[].logprobs.content`."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(msgspec.Struct):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class Choice(msgspec.Struct):
    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None
    """Required by OpenAI's schema (nullable): null unless the request asked for `logprobs`."""


class ChatCompletion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    object: Literal["chat.completion"] = "chat.completion"


class Delta(msgspec.Struct, omit_defaults=True):
    role: Literal["assistant"] | UnsetType = UNSET
    content: str | UnsetType = UNSET


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | UnsetType = UNSET
    """The log-probabilities of this chunk's tokens, when the request asked (else not written)."""


class ChatCompletionChunk(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"


class ModelCard(msgspec.Struct):
    id: str
    created: int = 0
    owned_by: str = "tiered-router"
    object: Literal["model"] = "model"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: Literal["list"] = "list"


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    """The OpenAI error body: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorDetail


class RouteDecision(msgspec.Struct):
    """`POST /v1/route`: the decision for a request, without generating."""

    tier: str
    score: float
    rule: str
    reasons: list[str]
    guardrails: bool
    fallback: list[str]
    prompt_tokens: int = 0
    """The router's estimate of the prompt's size, which the pre-flight memory check uses."""


DEFAULT_MAX_TOKENS = 256
"""What a request without max_tokens is assumed to need, where a worker's own default is not known."""


def completion_id() -> str:
    """A fresh `chatcmpl-…` id, as OpenAI forms them."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def decode_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode a request body; raises `msgspec.DecodeError`/`ValidationError` or `UnicodeDecodeError`."""
    return _REQUEST_DECODER.decode(body)


def encode(value: Any) -> bytes:
    return _ENCODER.encode(value)


_REQUEST_DECODER = msgspec.json.Decoder(ChatCompletionRequest)
_ENCODER = msgspec.json.Encoder()
