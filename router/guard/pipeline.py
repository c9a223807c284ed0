"""Guarded dispatch: input rails concurrently with the start of generation, output rails on the answer.

Speculative start: the dispatcher starts generating (with its fallback chain, so a request that falls
back to the remote API stays guarded there) while the input rails run. Nothing from the upstream is
released before they pass; a block cancels the generation by closing its connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import msgspec

from router.dispatch.chain import Dispatcher
from router.dispatch.continuation import ContinuingStream
from router.dispatch.outcome import Answer, Outcome, Route, RoutedStream, StreamAnswer
from router.guard.rails import Guard, GuardVerdict
from router.guard.stream import GuardedStream, choices_text, refusal_usage
from router.wire.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    Delta,
    ResponseMessage,
    RouteDecision,
    completion_id,
    encode,
)
from router.wire.sse import DONE, chunk_frame

T = TypeVar("T")
SEND_STEPS = 3
"""Event-loop turns given to a speculative generation: enough to acquire a pooled connection and write."""


def user_text(request: ChatCompletionRequest) -> str:
    """What the input rails read: every user message's text, in order (history can carry injections too)."""
    parts: list[str] = []
    for message in request.messages:
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            parts.append(message.content)
        elif message.content:
            parts.extend(p.text for p in message.content if isinstance(p.text, str))
    return "\n".join(parts)


def guarded_outcome(decision: RouteDecision, route: Route | None, verdict: GuardVerdict) -> Outcome:
    if verdict.blocked:
        return Outcome(decision, route, guard="blocked", guard_rail=verdict.rail)
    return Outcome(decision, route, guard="passed")


class GuardedDispatch:
    def __init__(self, guard: Guard, dispatcher: Dispatcher) -> None:
        self.guard = guard
        self.dispatcher = dispatcher

    async def complete(self, request: ChatCompletionRequest, decision: RouteDecision) -> Answer:
        text = user_text(request)
        verdict, generation = await self._input_then(text, self.dispatcher.complete(request, decision))
        if verdict.blocked:
            return self._refusal(request, decision, guarded_outcome(decision, None, verdict))
        assert generation is not None
        reply, route = await generation
        output = _completion_text(reply.body)
        out = await self.guard.check_output(text, output)
        if out.blocked:
            return self._refusal(request, decision, guarded_outcome(decision, route, out))
        return Answer(reply.body, guarded_outcome(decision, route, out))

    async def stream(self, request: ChatCompletionRequest, decision: RouteDecision) -> StreamAnswer:
        text = user_text(request)
        verdict, opening = await self._input_then(text, self.dispatcher.open_stream(request, decision))
        if verdict.blocked:
            refusal = self._refusal_stream(request, decision)
            return StreamAnswer(refusal, guarded_outcome(decision, None, verdict))
        assert opening is not None
        upstream, route = await opening
        usage_prompt_tokens = decision.prompt_tokens if request.include_usage() else None
        guarded = GuardedStream(self.guard, text, request.model, usage_prompt_tokens)
        frames = guarded.frames(upstream.chunks())
        # Pull up to the first checked release, so a block found there is still in the headers.
        first = await anext(frames, None)
        verdict = guarded.verdict or GuardVerdict(False)
        return StreamAnswer(_prepend(first, frames), guarded_outcome(decision, route, verdict))

    async def _input_then(self, text: str, generation: Awaitable[T]) -> tuple[GuardVerdict, asyncio.Task[T] | None]:
        """Run the input rails, with the generation started alongside when speculative start is on."""
        if not self.guard.settings.speculative:
            verdict = await self.guard.check_input(text)
            if verdict.blocked:
                _discard(generation)
                return verdict, None
            return verdict, asyncio.ensure_future(generation)
        task = asyncio.ensure_future(generation)
        # Let the generation send its request before the rails take the event loop: NeMo's runtime is
        # CPU-bound between awaits, so without this the request would leave only after the rails.
        for _ in range(SEND_STEPS):
            await asyncio.sleep(0)
        try:
            verdict = await self.guard.check_input(text)
        except BaseException:
            await _cancel(task)
            raise
        if verdict.blocked:
            await _cancel(task)
            return verdict, None
        return verdict, task

    def _refusal(self, request: ChatCompletionRequest, decision: RouteDecision, outcome: Outcome) -> Answer:
        refusal = self.guard.settings.refusal
        choice = Choice(0, ResponseMessage(content=refusal), "content_filter")
        usage = refusal_usage(decision.prompt_tokens, refusal)
        body = ChatCompletion(completion_id(), int(time.time()), request.model, [choice], usage)
        return Answer(encode(body), outcome)

    async def _refusal_stream(self, request: ChatCompletionRequest, decision: RouteDecision) -> AsyncIterator[bytes]:
        chunk_id, created, refusal = completion_id(), int(time.time()), self.guard.settings.refusal
        yield chunk_frame(chunk_id, created, request.model, Delta(role="assistant", content=""))
        yield chunk_frame(chunk_id, created, request.model, Delta(content=refusal))
        yield chunk_frame(chunk_id, created, request.model, Delta(), "content_filter")
        if request.include_usage():
            usage = refusal_usage(decision.prompt_tokens, refusal)
            yield chunk_frame(chunk_id, created, request.model, Delta(), usage=usage)
        yield DONE


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a speculative generation; an upstream stream it already opened is closed (the worker stops)."""
    task.cancel()
    await asyncio.wait({task})
    if task.cancelled() or task.exception() is not None:
        return  # nothing was opened, or it failed: either way there is nothing to relay
    result = task.result()
    if isinstance(result, tuple) and isinstance(result[0], ContinuingStream | RoutedStream):
        await result[0].aclose()


def _discard(awaitable: Awaitable[Any]) -> None:
    if asyncio.iscoroutine(awaitable):
        awaitable.close()


async def _prepend(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is not None:
        yield first
    async for frame in rest:
        yield frame


def _completion_text(body: bytes) -> str:
    """The answer's text for the output rails: message content plus any tool-call arguments."""
    try:
        reply: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return ""
    return choices_text(reply, "message")
