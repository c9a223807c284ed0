"""The text of a whole conversation as the classifiers and rules read it, with a token estimate."""

from __future__ import annotations

from dataclasses import dataclass, field

from msgspec import Raw

from router.wire.protocol import ChatCompletionRequest

PER_MESSAGE_TOKENS = 4
"""Chat templates add a few tokens per message (role markers, separators)."""


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: BPE vocabularies average ~4 chars or ~0.75 words per token.

    Taking the larger of the two keeps code, numbers and non-English text (many short
    tokens) from being underestimated.
    """
    if not text:
        return 0
    return max(len(text) // 4, (_words(text) * 4) // 3) + 1


def _words(text: str) -> int:
    """About how many words: the separators counted (C-speed `str.count`), not `split()`'s list of every word,
    which costs milliseconds on a 400,000-character prompt, on the event loop."""
    return sum(text.count(separator) for separator in (" ", "\n", "\t")) + 1


def extra_chars(request: ChatCompletionRequest) -> int:
    """Characters that reach the model (or its context) outside the messages' text: tool definitions, tool-call
    arguments, names, non-text parts (an inline image's data), response_format, metadata. A client can put
    megabytes there; each is counted where the text is (limits, the token estimate, rate limits, pre-flight)."""
    total = 0
    for raw in (request.tools, request.tool_choice, request.response_format, request.metadata, request.logit_bias):
        if isinstance(raw, Raw):
            total += len(raw)
    for message in request.messages:
        if isinstance(message.name, str):
            total += len(message.name)
        for raw in (message.tool_calls, message.function_call):
            if isinstance(raw, Raw):
                total += len(raw)
        if isinstance(message.content, list):
            for part in message.content:
                for value in (part.image_url, part.input_audio, part.file):
                    if isinstance(value, Raw):
                        total += len(value)
    return total


@dataclass(frozen=True, slots=True)
class Conversation:
    """Everything the classifiers look at, built once per request."""

    text: str
    """The conversation as read: every turn in order, truncated to `max_chars` (head and tail kept)."""
    last_user: str
    prompt_tokens: int
    turns: int
    user_turns: int
    system_chars: int
    total_chars: int
    """The messages' text and every other field that reaches the prompt (`extra_chars`)."""
    truncation: str | None = None
    """Why and how `text` was cut, for the decision's reasons; None if read whole."""
    roles: tuple[str, ...] = field(default=())

    @classmethod
    def from_request(cls, request: ChatCompletionRequest, max_chars: int) -> Conversation:
        texts = [m.text() for m in request.messages]
        full = "\n".join(texts)
        extra = extra_chars(request)
        tokens = estimate_tokens(full) + PER_MESSAGE_TOKENS * len(texts) + (extra // 3 if extra else 0)
        roles = tuple(m.role for m in request.messages)
        text, truncation = full, None
        if len(full) > max_chars:
            head = max_chars // 4
            tail = max_chars - head
            text = full[:head] + "\n" + full[-tail:]
            truncation = (
                f"truncated: read {max_chars} of {len(full)} chars (the first {head} and the last {tail}); "
                f"token count is over the whole conversation"
            )
        return cls(
            text=text,
            last_user=request.last_user_text(),
            prompt_tokens=tokens,
            turns=sum(1 for r in roles if r in ("user", "assistant")),
            user_turns=roles.count("user"),
            system_chars=sum(len(t) for t, r in zip(texts, roles, strict=True) if r in ("system", "developer")),
            total_chars=len(full) + extra,
            truncation=truncation,
            roles=roles,
        )
