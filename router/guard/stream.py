"""Output rails on a stream: upstream SSE frames are held until the text they carry has been checked.

The text is checked when the first content arrives and then every `stream_chunk_chars` new characters, each
check reading only the new text and the last few KB before it (`Guard.check_output(start=...)`), so a stream
costs linear time. After a check passes, frames are released up to the safe point: the checked length, less
`hold_back_chars`, and less any tail a pattern rail could still match (`Guard.hold_from`). A block closes the
upstream (which cancels its generation) and ends the stream with the refusal and `finish_reason:
"content_filter"`, under the upstream stream's own id and model, then (when the client asked for
`stream_options.include_usage`) a usage chunk, the upstream's own being held back with the rest, and a last
comment `: x-router-guardrail blocked (<rail>)`, since the headers said `passed`; held text is never sent.

A stream served by an unguarded tier passes through unchecked (`armed=False`) until it is continued onto a guarded
one (the continuation's `: x-router-fallback a->b` comment): from there on it is checked like any other.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from router.decide.conversation import estimate_tokens
from router.dispatch.continuation import continued_to
from router.dispatch.outcome import Outcome
from router.guard.rails import Guard, GuardVerdict
from router.wire.protocol import Delta, Usage, completion_id
from router.wire.sse import DONE, FrameSplitter, chunk_frame, frame_data

DONE_DATA = b"[DONE]"


def refusal_usage(prompt_tokens: int, text: str) -> Usage:
    """The usage of an answer the guard wrote: the router's prompt estimate, and the estimate of the text."""
    completion = estimate_tokens(text)
    return Usage(prompt_tokens, completion, prompt_tokens + completion)


class GuardedStream:
    """Iterate `frames()` once; `verdict` is the first block, if any, also written into `outcome`.

    `usage_prompt_tokens`: the prompt estimate a blocked stream's usage chunk reports; None when the client did
    not ask for usage. `armed`: check from the start; else only once `arms(tier)` says a tier the stream is
    continued onto is guarded."""

    def __init__(
        self,
        guard: Guard,
        user_text: str,
        model: str,
        usage_prompt_tokens: int | None = None,
        *,
        armed: bool = True,
        arms: Callable[[str], bool] = lambda _: True,
        outcome: Outcome | None = None,
    ) -> None:
        self.guard = guard
        self.user_text = user_text
        self.usage_prompt_tokens = usage_prompt_tokens
        self.verdict: GuardVerdict | None = None
        self.armed = armed
        self._arms = arms
        self._outcome = outcome
        self._text: list[str] = []
        self._length = 0
        self._checked = 0
        self._released = 0
        self._released_frames = 0
        self._pending: deque[tuple[int, bytes]] = deque()
        self._identity: tuple[str, int, str] = (completion_id(), int(time.time()), model)
        """id, created, model of the refusal chunk: the upstream stream's own once one of its events is read."""
        self._identified = False

    async def frames(self, upstream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        splitter = FrameSplitter()
        chunk_chars = self.guard.settings.stream_chunk_chars
        async for raw in upstream:
            for frame in splitter.feed(raw):
                self._add(frame)
            if not self.armed:
                for frame in self._release_all():
                    yield frame
                continue
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
        released = await self._check(final=True) if self.armed else self._release_all()
        if self.verdict is not None:
            yield self._refusal()
            return
        for frame in released:
            yield frame

    def _add(self, frame: bytes) -> None:
        target = continued_to(frame)
        if target is not None and not self.armed and self._arms(target):
            self.armed = True  # held from here on; what was released before was the unguarded tier's
        event = _frame_event(frame)
        if not self._identified and isinstance(event, dict):
            chunk_id, created, model = event.get("id"), event.get("created"), event.get("model")
            if isinstance(chunk_id, str) and isinstance(created, int) and isinstance(model, str):
                self._identity, self._identified = (chunk_id, created, model), True
        text = choices_text(event, "delta")
        if text:
            self._text.append(text)
            self._length += len(text)
        self._pending.append((self._length, frame))

    def _release_all(self) -> list[bytes]:
        released = [frame for _, frame in self._pending]
        if self._pending:
            self._released = self._pending[-1][0]
        self._pending.clear()
        self._released_frames += len(released)
        return released

    async def _check(self, *, final: bool) -> list[bytes]:
        text = "".join(self._text)
        self._text = [text]  # joined once per check, not once per frame
        start, self._checked = self._checked, len(text)
        if text:
            verdict = await self.guard.check_output(self.user_text, text, start=start)
            if verdict.blocked:
                self.verdict = verdict
                if self._outcome is not None:
                    self._outcome.guard, self._outcome.guard_rail = "blocked", verdict.rail
                return []
        safe = len(text)
        if not final:
            safe = min(safe - self.guard.settings.hold_back_chars, self.guard.hold_from(text))
        released = []
        while self._pending and self._pending[0][0] <= safe:
            self._released, frame = self._pending.popleft()
            released.append(frame)
        self._released_frames += len(released)
        return released

    def _refusal(self) -> bytes:
        # After released text the refusal starts a paragraph of its own; alone, it is the whole content, and
        # its chunk opens the answer (the upstream's role chunk was held back), so it carries the role.
        separator = "\n\n" if self._released else ""
        content = separator + self.guard.settings.refusal
        delta = Delta(content=content) if self._released_frames else Delta(role="assistant", content=content)
        chunk_id, created, model = self._identity
        frames = chunk_frame(chunk_id, created, model, delta, "content_filter")
        if self.usage_prompt_tokens is not None:
            # What the client received: the released text, then the refusal.
            sent = "".join(self._text)[: self._released] + content
            frames += chunk_frame(
                chunk_id, created, model, Delta(), usage=refusal_usage(self.usage_prompt_tokens, sent)
            )
        rail = self.verdict.rail if self.verdict is not None else None
        return frames + f": x-router-guardrail blocked ({rail or 'output rails'})\n\n".encode() + DONE


def _frame_event(frame: bytes) -> Any:
    """The decoded event of an SSE frame; None for a comment, `[DONE]` or data that is not JSON."""
    data = frame_data(frame)
    if not data or data == DONE_DATA:
        return None
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None


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
