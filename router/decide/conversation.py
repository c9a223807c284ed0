"""The text of a whole conversation as the classifiers and rules read it, with a token estimate."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    truncation: str | None = None
    """Why and how `text` was cut, for the decision's reasons; None if read whole."""
    roles: tuple[str, ...] = field(default=())

    @classmethod
    def from_request(cls, request: ChatCompletionRequest, max_chars: int) -> Conversation:
        texts = [m.text() for m in request.messages]
        full = "\n".join(texts)
        tokens = estimate_tokens(full) + PER_MESSAGE_TOKENS * len(texts)
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
            total_chars=len(full),
            truncation=truncation,
            roles=roles,
        )
