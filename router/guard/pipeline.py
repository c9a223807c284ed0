"""Guarded dispatch: the rails of every hop a request takes, around the dispatcher's chain walk.

Every request (once a guard is loaded) gets an `InputGate`: the LLM-free input rails screen all its client text
(router/guard/texts.py) from the start, and hops to guarded tiers (router/guard/gate.GuardPolicy) get the rest of
the input rails too. The dispatcher asks the gate before each hop: a local tier may start generating while the
rails run (speculative start), a remote one is sent nothing before they pass (unless `speculative_remote`).
Nothing from any tier is released before the gate clears it; a block stops the generation (its connection is
closed) and answers the refusal. Output rails run on answers from guarded tiers, and on a stream from the point
where it is continued onto one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import msgspec

from router.dispatch.chain import Dispatcher
from router.dispatch.continuation import ContinuingStream
from router.dispatch.gate import HopRefused
from router.dispatch.outcome import Answer, Outcome, Route, RoutedStream, StreamAnswer
from router.guard.gate import GuardPolicy, InputGate
from router.guard.rails import Guard, GuardVerdict
from router.guard.stream import GuardedStream, choices_text, refusal_usage
from router.guard.texts import client_texts
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


def guarded_outcome(
    decision: RouteDecision, route: Route | None, verdict: GuardVerdict, *, full: bool = True
) -> Outcome:
    """`full`: every rail of the hop ran (`passed`); else only the screen did (`screened`)."""
    if verdict.blocked:
        return Outcome(decision, route, guard="blocked", guard_rail=verdict.rail)
    return Outcome(decision, route, guard="passed" if full else "screened")


class GuardedDispatch:
    def __init__(self, guard: Guard, dispatcher: Dispatcher) -> None:
        self.guard = guard
        self.dispatcher = dispatcher

    def _gate(self, request: ChatCompletionRequest, decision: RouteDecision) -> InputGate:
        policy = GuardPolicy(self.dispatcher.config, decision)
        return InputGate(self.guard, [piece.text for piece in client_texts(request)], policy)

    async def complete(self, request: ChatCompletionRequest, decision: RouteDecision) -> Answer:
        gate = self._gate(request, decision)
        try:
            reply, route = await self._generate(gate, self.dispatcher.complete(request, decision, gate))
            verdict = await gate.verdict(route.tier)
        except HopRefused as refused:
            return self._refusal(request, decision, _blocked(decision, refused))
        finally:
            await gate.close()
        if verdict.blocked:
            return self._refusal(request, decision, guarded_outcome(decision, route, verdict))
        guarded = gate.policy.guarded(route.tier)
        if not guarded:
            return Answer(reply.body, guarded_outcome(decision, route, verdict, full=False))
        out = await self.guard.check_output("\n\n".join(gate.texts), _completion_text(reply.body))
        if out.blocked:
            return self._refusal(request, decision, guarded_outcome(decision, route, out))
        return Answer(reply.body, guarded_outcome(decision, route, out))

    async def stream(self, request: ChatCompletionRequest, decision: RouteDecision) -> StreamAnswer:
        gate = self._gate(request, decision)
        try:
            upstream, route = await self._generate(gate, self.dispatcher.open_stream(request, decision, gate))
            try:
                verdict = await gate.verdict(route.tier)
            except BaseException:
                await upstream.aclose()
                raise
        except HopRefused as refused:
            return StreamAnswer(self._refusal_stream(request, decision), _blocked(decision, refused))
        finally:
            await gate.close()
        if verdict.blocked:
            await upstream.aclose()
            return StreamAnswer(self._refusal_stream(request, decision), guarded_outcome(decision, route, verdict))
        policy = gate.policy
        outcome = guarded_outcome(decision, route, verdict, full=policy.guarded(route.tier))
        rest = [decision.tier, *decision.fallback]
        rest = rest[rest.index(route.tier) + 1 :] if route.tier in rest else []
        if not policy.any_guarded([route.tier, *rest]):
            return StreamAnswer(upstream.chunks(), outcome)
        usage_prompt_tokens = decision.prompt_tokens if request.include_usage() else None
        guarded = GuardedStream(
            self.guard,
            "\n\n".join(gate.texts),
            request.model,
            usage_prompt_tokens,
            armed=policy.guarded(route.tier),
            arms=policy.guarded,
            outcome=outcome,
        )
        frames = guarded.frames(upstream.chunks())
        # Pull up to the first checked release, so a block found there is still in the headers.
        first = await anext(frames, None)
        if guarded.verdict is not None:
            outcome.guard, outcome.guard_rail = "blocked", guarded.verdict.rail
        return StreamAnswer(_prepend(first, frames), outcome)

    async def _generate(self, gate: InputGate, generation: Awaitable[T]) -> T:
        """Run the chain walk; if the screen blocks while it runs, stop it at once (its stream is closed)."""
        task: asyncio.Task[T] = asyncio.ensure_future(generation)
        while not task.done():
            await asyncio.wait({task, gate.screening}, return_when=asyncio.FIRST_COMPLETED)
            blocked = gate.screened_block()
            if blocked is not None and not task.done():
                await _cancel(task)
                raise HopRefused(blocked)
            if gate.screening.done():
                break
        return await task

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


def _blocked(decision: RouteDecision, refused: HopRefused) -> Outcome:
    verdict = refused.verdict
    assert isinstance(verdict, GuardVerdict)
    return guarded_outcome(decision, None, verdict)


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a speculative generation; an upstream stream it already opened is closed (the worker stops)."""
    task.cancel()
    await asyncio.wait({task})
    if task.cancelled() or task.exception() is not None:
        return  # nothing was opened, or it failed: either way there is nothing to relay
    result = task.result()
    if isinstance(result, tuple) and isinstance(result[0], ContinuingStream | RoutedStream):
        await result[0].aclose()


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
