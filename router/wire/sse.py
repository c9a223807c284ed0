"""Server-sent events as OpenAI streams them: `data: <json>\n\n` frames ending in `data: [DONE]`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from msgspec import UNSET, UnsetType

from router.wire.errors import RouterError
from router.wire.protocol import ChatCompletionChunk, ChoiceLogprobs, ChunkChoice, Delta, Usage, encode

DONE = b"data: [DONE]\n\n"


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def chunk_frame(
    chunk_id: str,
    created: int,
    model: str,
    delta: Delta,
    finish: str | None = None,
    usage: Usage | None = None,
    *,
    index: int = 0,
    logprobs: ChoiceLogprobs | UnsetType = UNSET,
) -> bytes:
    """One `chat.completion.chunk` event; a usage-only chunk (stream_options.include_usage) has no choices.
    `index` is the choice's (n > 1 interleaves them); `logprobs` those of the chunk's tokens, when asked."""
    choices = [] if usage else [ChunkChoice(index, delta, finish, logprobs)]
    return frame(encode(ChatCompletionChunk(chunk_id, created, model, choices, usage)))


def frame_data(complete: bytes) -> bytes:
    """The data of one complete SSE frame (its `data:` lines joined); b"" for a comment or an empty frame."""
    return b"".join(line[5:].strip() for line in complete.split(b"\n") if line.startswith(b"data:"))


class FrameSplitter:
    """Complete SSE frames (each ending in a blank line) out of raw chunks: the one splitter every reader of a
    stream uses. A partial frame waits for the chunk that completes it."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, raw: bytes) -> list[bytes]:
        self._buffer += raw
        if b"\n\n" not in self._buffer:
            return []
        *complete, self._buffer = self._buffer.split(b"\n\n")
        return [part + b"\n\n" for part in complete if part.strip()]

    def rest(self) -> bytes:
        """What is left when the stream ends: a frame without its blank line, or b""."""
        rest, self._buffer = self._buffer, b""
        return rest if rest.strip() else b""


async def complete_frames(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Complete SSE frames from raw chunks; a partial frame left at the end is dropped."""
    splitter = FrameSplitter()
    async for raw in chunks:
        for complete in splitter.feed(raw):
            yield complete


def error_frame(error: RouterError) -> bytes:
    """An in-band error for a stream whose headers were already sent (the OpenAI SDK raises on it)."""
    return frame(encode(error.body()))


async def relay(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass upstream bytes through as they arrive; a failure mid-stream ends it with an error event."""
    try:
        async for chunk in chunks:
            yield chunk
    except RouterError as exc:
        yield error_frame(exc)
        yield DONE
