"""The legacy text-completions wire format (`POST /v1/completions`), and its translation to and from chat.

The router has no raw-completion path: a prompt becomes a chat request whose single user message is the prompt
(so it is routed, guarded and served exactly as chat is, and a worker applies its chat template to it), and the
chat answer comes back as `text_completion` objects. `suffix`, `echo`, `best_of` and `logprobs` (whose shape
differs from chat's) are refused with a 400 naming them rather than ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, UnsetType

from router.wire.errors import InvalidRequest
from router.wire.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    MaxTokens,
    Penalty,
    StopList,
    StreamOptions,
    Temperature,
    TopP,
    Usage,
    encode,
)

FINISH_REASONS = ("stop", "length", "content_filter")


class CompletionRequest(msgspec.Struct, omit_defaults=True):
    """`POST /v1/completions`; unknown fields are ignored, as OpenAI does."""

    prompt: str | Annotated[list[str], Meta(min_length=1)]
    model: str = "auto"
    stream: bool = False
    stream_options: StreamOptions | UnsetType | None = UNSET
    max_tokens: MaxTokens | UnsetType | None = UNSET
    temperature: Temperature | UnsetType | None = UNSET
    top_p: TopP | UnsetType | None = UNSET
    stop: str | StopList | UnsetType | None = UNSET
    seed: int | UnsetType | None = UNSET
    n: Literal[1] | UnsetType | None = UNSET
    user: str | UnsetType = UNSET
    presence_penalty: Penalty | UnsetType | None = UNSET
    frequency_penalty: Penalty | UnsetType | None = UNSET
    logit_bias: Raw | UnsetType = UNSET
    logprobs: int | UnsetType | None = UNSET
    suffix: str | UnsetType | None = UNSET
    echo: bool | UnsetType | None = UNSET
    best_of: int | UnsetType | None = UNSET

    def to_chat(self) -> ChatCompletionRequest:
        """The chat request this completion is served as: the prompt as the single user message."""
        self._refuse_unsupported()
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise InvalidRequest(
                    f"prompt holds {len(self.prompt)} prompts; this router serves one prompt per request",
                    param="prompt",
                )
            text = self.prompt[0]
        else:
            text = self.prompt
        return ChatCompletionRequest(
            messages=[ChatMessage(role="user", content=text)],
            model=self.model,
            stream=self.stream,
            stream_options=self.stream_options,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop,
            seed=self.seed,
            n=self.n,
            user=self.user,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=self.logit_bias,
        )

    def _refuse_unsupported(self) -> None:
        if self.suffix not in (UNSET, None, ""):
            raise InvalidRequest("suffix is not supported (no fill-in-the-middle)", param="suffix")
        if self.echo is True:
            raise InvalidRequest("echo is not supported", param="echo")
        if self.best_of not in (UNSET, None, 1):
            raise InvalidRequest("best_of is not supported", param="best_of")
        if self.logprobs not in (UNSET, None):
            raise InvalidRequest(
                "logprobs is not supported on /v1/completions; use /v1/chat/completions", param="logprobs"
            )


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class TextCompletion(msgspec.Struct):
    """A `text_completion` object: the whole answer, or one streamed chunk of it (the same shape)."""

    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    object: Literal["text_completion"] = "text_completion"


class _ChatMessageIn(msgspec.Struct):
    content: str | None = None


class _ChatChoiceIn(msgspec.Struct):
    index: int = 0
    message: _ChatMessageIn | None = None
    delta: _ChatMessageIn | None = None
    finish_reason: str | None = None


class ChatAnswerIn(msgspec.Struct):
    """What is read back out of a chat completion or chunk to rewrite it (other fields are dropped)."""

    id: str = ""
    created: int = 0
    model: str = ""
    choices: list[_ChatChoiceIn] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    error: Raw | UnsetType = UNSET
    """An in-band error event of a stream, passed through as it is."""


def decode_completion_request(body: bytes) -> CompletionRequest:
    """Decode a request body; raises `msgspec.DecodeError`/`ValidationError` or `UnicodeDecodeError`."""
    return _REQUEST_DECODER.decode(body)


def text_finish(reason: str | None) -> str | None:
    """A chat finish reason as a completion's (`tool_calls` cannot happen here: no tools are sent)."""
    if reason is None:
        return None
    return reason if reason in FINISH_REASONS else "stop"


def completion_from_chat(chat: ChatAnswerIn, *, streamed: bool) -> TextCompletion:
    """A chat completion (or chunk) rewritten as a `text_completion` object of the same id, time and model."""
    choices = []
    for choice in chat.choices:
        part = choice.delta if streamed else choice.message
        text = (part.content if part is not None else None) or ""
        finish = text_finish(choice.finish_reason) if streamed else text_finish(choice.finish_reason) or "stop"
        choices.append(CompletionChoice(choice.index, text, finish))
    return TextCompletion(_completion_id(chat.id), chat.created, chat.model, choices, chat.usage)


def rewrite_chat_body(body: bytes) -> bytes:
    return encode(completion_from_chat(_ANSWER_DECODER.decode(body), streamed=False))


def rewrite_chat_chunk(data: bytes) -> bytes:
    """One chunk's data (JSON); an in-band error object passes through unchanged."""
    chat = _ANSWER_DECODER.decode(data)
    return data if chat.error is not UNSET else encode(completion_from_chat(chat, streamed=True))


def _completion_id(chat_id: str) -> str:
    return "cmpl-" + chat_id.removeprefix("chatcmpl-")


_REQUEST_DECODER = msgspec.json.Decoder(CompletionRequest)
_ANSWER_DECODER = msgspec.json.Decoder(ChatAnswerIn)
