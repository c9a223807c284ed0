"""Output rails on a stream: upstream SSE frames are held until the text they carry has been checked.

The text so far is re-checked when the first content arrives and then every `stream_chunk_chars`
new characters. After a check passes, frames are released up to the safe point: the checked length,
less `hold_back_chars`, and less any tail a pattern rail could still match (`Guard.hold_from`). A
block closes the upstream (which cancels its generation) and ends the stream with the refusal and
`finish_reason: "content_filter"`; held text is never sent.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from router.guard.rails import Guard, GuardVerdict
from router.wire.protocol import Delta, completion_id
from router.wire.sse import DONE, FrameSplitter, chunk_frame, frame_data

DONE_DATA = b"[DONE]"


class GuardedStream:
    """Iterate `frames()` once; `verdict` is the first block, if any."""

    def __init__(self, guard: Guard, user_text: str, model: str) -> None:
        self.guard = guard
        self.user_text = user_text
        self.model = model
        self.verdict: GuardVerdict | None = None
        self._text: list[str] = []
        self._length = 0
        self._checked = 0
        self._released = 0
        self._pending: deque[tuple[int, bytes]] = deque()
        self._chunk_id = completion_id()

    async def frames(self, upstream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        splitter = FrameSplitter()
        chunk_chars = self.guard.settings.stream_chunk_chars
        async for raw in upstream:
            for frame in splitter.feed(raw):
                self._add(frame)
            due = self._length - self._checked >= chunk_chars or (self._checked == 0 and self._length > 0)
            if due:
                released = await self._check(final=False)
                if self.verdict is not None:
                    yield self._refusal()
                    return
                for frame in released:
                    yield frame
        rest = splitter.rest()
        if rest:
            self._add(rest)
        released = await self._check(final=True)
        if self.verdict is not None:
            yield self._refusal()
            return
        for frame in released:
            yield frame

    def _add(self, frame: bytes) -> None:
        text = _frame_text(frame)
        if text:
            self._text.append(text)
            self._length += len(text)
        self._pending.append((self._length, frame))

    async def _check(self, *, final: bool) -> list[bytes]:
        text = "".join(self._text)
        self._checked = len(text)
        if text:
            verdict = await self.guard.check_output(self.user_text, text)
            if verdict.blocked:
                self.verdict = verdict
                return []
        safe = len(text)
        if not final:
            safe = min(safe - self.guard.settings.hold_back_chars, self.guard.hold_from(text))
        released = []
        while self._pending and self._pending[0][0] <= safe:
            self._released, frame = self._pending.popleft()
            released.append(frame)
        return released

    def _refusal(self) -> bytes:
        # After released text the refusal starts a paragraph of its own; alone, it is the whole content.
        separator = "\n\n" if self._released else ""
        delta = Delta(content=separator + self.guard.settings.refusal)
        return chunk_frame(self._chunk_id, int(time.time()), self.model, delta, "content_filter") + DONE


def _frame_text(frame: bytes) -> str:
    """The text an SSE frame adds to the answer: content deltas and tool-call argument deltas."""
    data = frame_data(frame)
    if not data or data == DONE_DATA:
        return ""
    try:
        event: Any = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return ""
    return choices_text(event, "delta")


def choices_text(event: Any, field: str) -> str:
    """The text of a completion (`field="message"`) or chunk (`"delta"`): content plus tool-call arguments."""
    parts: list[str] = []
    for choice in event.get("choices") or [] if isinstance(event, dict) else []:
        part = choice.get(field) or {}
        if isinstance(part.get("content"), str):
            parts.append(part["content"])
        for call in part.get("tool_calls") or []:
            arguments = (call.get("function") or {}).get("arguments")
            if isinstance(arguments, str):
                parts.append(arguments)
    return "".join(parts)
