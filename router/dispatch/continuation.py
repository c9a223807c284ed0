"""Streams that survive their tier: a failure after tokens were sent continues on the next tier of the chain.

The relay passes complete SSE frames through as they arrive (a frame is never sent half), keeping them
aside undecoded. Only when the upstream fails before its finish does anything get parsed: the text sent so
far becomes a final assistant message, the next tier of the chain is asked to continue it (with its
`continuation_body`, e.g. vLLM's `continue_final_message`), and its frames are rewritten to the original
stream's id and model. Where continuing is impossible (policy `error`, no tier left, several choices, tool
calls) the stream ends with an error event and `[DONE]`: never cut silently, never left hanging.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from router.wire.errors import UpstreamBadResponse, UpstreamError
from router.wire.protocol import ChatCompletionRequest, ChatMessage
from router.wire.sse import DONE, complete_frames, frame, frame_data

if TYPE_CHECKING:
    from router.dispatch.outcome import Route, RoutedStream

log = logging.getLogger(__name__)
DONE_DATA = b"[DONE]"

Reopen = Callable[[ChatCompletionRequest, list[str]], Awaitable[tuple["RoutedStream", "Route"]]]
"""Open a stream for a request on the first tier of a chain that takes it (the dispatcher's own path)."""


class StreamState:
    """What a relayed stream has sent: its frames, kept undecoded until a failure needs them."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.done = False

    def add(self, complete: bytes) -> None:
        self.frames.append(complete)
        if frame_data(complete) == DONE_DATA:
            self.done = True

    def events(self) -> list[dict[str, Any]]:
        found = []
        for raw in self.frames:
            data = frame_data(raw)
            if not data or data == DONE_DATA:
                continue
            try:
                event = msgspec.json.decode(data)
            except msgspec.DecodeError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found


class Transcript:
    """The decoded view of what was sent, built only after a failure."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.text = ""
        self.content_chunks = 0
        self.finished = False
        self.indices: set[int] = set()
        self.tool_calls = False
        self.first: dict[str, Any] | None = events[0] if events else None
        for event in events:
            for choice in event.get("choices") or []:
                self.indices.add(int(choice.get("index", 0)))
                delta = choice.get("delta") or {}
                if isinstance(delta.get("content"), str) and delta["content"]:
                    self.text += delta["content"]
                    self.content_chunks += 1
                if delta.get("tool_calls"):
                    self.tool_calls = True
                if choice.get("finish_reason"):
                    self.finished = True

    def why_not(self) -> str | None:
        if len(self.indices) > 1:
            return "the stream has several choices"
        if self.tool_calls:
            return "the stream carries tool calls"
        return None


def continuation_request(request: ChatCompletionRequest, transcript: Transcript) -> ChatCompletionRequest:
    """The same request, with the text so far as a final assistant message and the tokens left."""
    messages = list(request.messages)
    if transcript.text:
        messages.append(ChatMessage(role="assistant", content=transcript.text))
    changes: dict[str, Any] = {"messages": messages}
    limit = request.token_limit()
    if limit is not None:
        left = max(1, limit - transcript.content_chunks)
        for key in ("max_completion_tokens", "max_tokens"):
            if isinstance(getattr(request, key), int):
                changes[key] = left
    return msgspec.structs.replace(request, **changes)


class ContinuingStream:
    """`chunks()`: the first tier's stream, continued on `rest` of the chain if it fails mid-way."""

    def __init__(
        self,
        request: ChatCompletionRequest,
        first: RoutedStream,
        route: Route,
        rest: list[str],
        reopen: Reopen,
        policy: str,
        on_continue: Callable[[str, str, str], None],
    ) -> None:
        self.request = request
        self.first = first
        self.route = route
        self.rest = rest
        self.reopen = reopen
        self.policy = policy
        self.on_continue = on_continue
        self._current = first

    async def aclose(self) -> None:
        await self._current.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        state = StreamState()
        try:
            async for complete in complete_frames(self.first.chunks()):
                state.add(complete)
                yield complete
            if state.done:
                return
            raise UpstreamBadResponse(self.route.tier, "the stream ended before [DONE]")
        except UpstreamError as exc:
            failure = exc
        transcript = Transcript(state.events())
        if transcript.finished:  # the answer was complete; only the trailer was lost
            yield DONE
            return
        why_not = transcript.why_not() or self._why_not()
        if why_not is not None:
            log.warning("stream on tier %s failed mid-way (%s); not continued: %s", self.route.tier, failure, why_not)
            failure.explain(f"the stream broke off mid-way and was not continued: {why_not}")
            raise failure
        async for complete in self._continue(transcript, failure):
            yield complete

    def _why_not(self) -> str | None:
        if self.policy != "continue":
            return "routing.mid_stream is 'error'"
        if not self.rest:
            return "no tier is left in the fallback chain"
        return None

    async def _continue(self, transcript: Transcript, failure: UpstreamError) -> AsyncIterator[bytes]:
        request = continuation_request(self.request, transcript)
        stream, route = await self.reopen(request, self.rest)
        self._current = stream
        source, reason = self.route.tier, failure.reason or failure.code or type(failure).__name__
        self.on_continue(source, route.tier, reason)
        log.warning("stream on tier %s failed mid-way (%s); continued on %s", source, failure, route.tier)
        yield continued_comment(source, route.tier, reason)
        original = transcript.first or {}
        async for complete in complete_frames(stream.chunks()):
            rewritten = _rewrite(complete, original, drop_role=bool(transcript.text))
            if rewritten is not None:
                yield rewritten


CONTINUED = b": x-router-fallback "


def continued_comment(source: str, target: str, reason: str) -> bytes:
    """The SSE comment a continued stream carries where the next tier takes over."""
    return f"{CONTINUED.decode()}{source}->{target} ({reason}), mid-stream\n\n".encode()


def continued_to(frame: bytes) -> str | None:
    """The tier a continuation comment names as taking over (None for any other frame)."""
    if not frame.startswith(CONTINUED):
        return None
    hop = frame[len(CONTINUED) :].split(b" ", 1)[0]
    return hop.partition(b"->")[2].decode("utf-8", "replace") or None


def _rewrite(complete: bytes, original: dict[str, Any], *, drop_role: bool) -> bytes | None:
    """A continuation frame as part of the original stream: its id, created and model; no second role."""
    data = frame_data(complete)
    if not data or data == DONE_DATA:
        return complete if data else None
    try:
        event = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return complete
    if not isinstance(event, dict):
        return complete
    for key in ("id", "created", "model"):
        if key in original:
            event[key] = original[key]
    if drop_role:
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            delta.pop("role", None)
            if not delta.get("content") and not delta.get("tool_calls") and not choice.get("finish_reason"):
                return None
    return frame(msgspec.json.encode(event))
