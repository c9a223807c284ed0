"""The worker's serving logic between HTTP and the engine: chat template, limits, OpenAI responses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import asdict, replace
from typing import Any

import msgspec
from msgspec import UNSET, Raw, UnsetType

from router.core.workers import CONTEXT_LENGTH_EXCEEDED, WorkerConfig
from router.wire.errors import InvalidRequest
from router.wire.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    Delta,
    ResponseMessage,
    Usage,
    completion_id,
)
from router.wire.sse import DONE, chunk_frame, error_frame
from workers.choices import TokenNames, merged
from workers.engine import Engine, Event, Failed, Finished, GenerationRequest, RequestStream, TextDelta
from workers.errors import from_engine_error
from workers.grammar import GrammarCompiler
from workers.ledger import VramLedger
from workers.sampling import SamplingParams
from workers.tools import (
    ToolCallStream,
    ToolMessage,
    ToolPlan,
    parse_calls,
    plan_for,
    supports_tools,
    template_messages,
)

LOGIT_BIAS_LIMIT = 100.0
"""OpenAI clamps each `logit_bias` value to [-100, 100]."""


class WorkerService:
    def __init__(
        self,
        name: str,
        config: WorkerConfig,
        engine: Engine,
        tokenizer: Any,
        ledger: VramLedger,
        grammar: GrammarCompiler | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.engine = engine
        self.tokenizer = tokenizer
        self.ledger = ledger
        self.tokens = TokenNames(tokenizer)
        self.grammar = grammar
        self.native_tools = supports_tools(tokenizer)

    def generation_request(self, chat: ChatCompletionRequest, plan: ToolPlan | None = None) -> GenerationRequest:
        plan = plan or plan_for(chat)
        messages = template_messages(chat.messages, plan, self.native_tools)
        continuing = chat.continue_final_message is True
        if continuing and messages[-1]["role"] != "assistant":
            raise InvalidRequest("continue_final_message needs a final assistant message", param="messages")
        tools = {"tools": plan.tools} if plan.tools and self.native_tools else {}
        try:
            encoded = self.tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=not continuing,
                continue_final_message=continuing,
                return_dict=True,
                **tools,
            )
        except Exception as exc:  # jinja errors: e.g. a template that rejects a role order
            raise InvalidRequest(f"the model's chat template rejected the messages: {exc}") from exc
        prompt: list[int] = list(encoded["input_ids"])
        room = self.config.max_seq_len - len(prompt)
        if room < 1:
            raise InvalidRequest(
                f"the prompt is {len(prompt)} tokens; this worker serves at most {self.config.max_seq_len} in all",
                param="messages",
                code=CONTEXT_LENGTH_EXCEEDED,
            )
        constrained = plan.constrained
        # A grammar-constrained answer cut short is broken JSON, so without max_tokens it may run to the cap.
        default = self.config.max_tokens_cap if constrained else self.config.max_tokens_default
        wanted = chat.token_limit() or default
        max_tokens = min(wanted, self.config.max_tokens_cap, room)
        temperature = (
            1.0 if chat.temperature is None or not isinstance(chat.temperature, float | int) else chat.temperature
        )
        top_p = chat.top_p if isinstance(chat.top_p, float | int) else 1.0
        seed = chat.seed if isinstance(chat.seed, int) else None
        stop = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop) if isinstance(chat.stop, list) else []
        sampling = SamplingParams(
            float(temperature),
            float(top_p),
            seed,
            presence_penalty=_penalty(chat.presence_penalty),
            frequency_penalty=_penalty(chat.frequency_penalty),
            logit_bias=_logit_bias(chat.logit_bias, self.engine.vocab_size),
            logprobs=chat.wanted_logprobs(),
        )
        min_tokens = max_tokens if chat.ignore_eos is True else min(max_tokens, chat.min_tokens or 0)
        constraint = None
        if constrained:
            if self.grammar is None:
                raise InvalidRequest("this worker has no grammar engine", param="response_format")
            constraint = plan.constraint(self.grammar)
        request_id = completion_id()
        return GenerationRequest(request_id, prompt, max_tokens, sampling, stop, min_tokens, constraint)

    def generation_requests(self, chat: ChatCompletionRequest, plan: ToolPlan) -> list[GenerationRequest]:
        """One request per choice (`n`), each its own sequence of the batch (and its own grammar state); with a
        seed, choice i uses seed + i."""
        requests = [self.generation_request(chat, plan) for _ in range(chat.choices())]
        first = requests[0]
        seed = first.sampling.seed
        return [first] + [
            replace(
                request,
                id=f"{first.id}-{i}",
                sampling=replace(request.sampling, seed=None if seed is None else seed + i),
            )
            for i, request in enumerate(requests[1:], start=1)
        ]

    def submit(self, chat: ChatCompletionRequest, plan: ToolPlan) -> list[RequestStream]:
        """Submit every choice, or none: a refusal of one cancels those already queued."""
        loop = asyncio.get_running_loop()
        streams: list[RequestStream] = []
        try:
            for request in self.generation_requests(chat, plan):
                streams.append(self.engine.submit(request, loop))
        except BaseException:
            for stream in streams:
                stream.cancel()
            raise
        return streams

    async def _grammar_ready(self, plan: ToolPlan) -> None:
        """A constrained request waits, off the event loop, for the grammar engine's tokenizer conversion."""
        if self.grammar is not None and not self.grammar.ready and plan.constrained:
            await asyncio.to_thread(self.grammar.wait)

    async def complete(self, chat: ChatCompletionRequest) -> ChatCompletion:
        plan = plan_for(chat)
        await self._grammar_ready(plan)
        streams = self.submit(chat, plan)
        parts: list[list[str]] = [[] for _ in streams]
        logprobs: list[list[Any]] = [[] for _ in streams]
        finished: dict[int, Finished] = {}
        try:
            async for index, event in merged(streams):
                if isinstance(event, TextDelta):
                    parts[index].append(event.text)
                    logprobs[index].extend(self.tokens.entries(event.logprobs))
                elif isinstance(event, Finished):
                    finished[index] = event
                else:
                    raise from_engine_error(event.error)
        finally:
            for stream in streams:
                stream.cancel()  # a no-op once finished; stops generation if the client went away
        wanted = chat.wanted_logprobs() >= 0
        choices = []
        for i in range(len(streams)):
            text = "".join(parts[i])
            message: ResponseMessage = ResponseMessage(content=text)
            reason = finished[i].reason
            if plan.parses_calls:
                content, calls = parse_calls(text)
                if calls:
                    message, reason = ToolMessage(content=content, tool_calls=calls), "tool_calls"
            choices.append(Choice(i, message, reason, ChoiceLogprobs(logprobs[i]) if wanted else None))
        return ChatCompletion(streams[0].request.id, int(time.time()), self.name, choices, _usage(finished.values()))

    async def open_stream(self, chat: ChatCompletionRequest) -> AsyncIterator[bytes]:
        """Submit and wait for the first event, so a refusal or an early failure is still a plain 503."""
        plan = plan_for(chat)
        await self._grammar_ready(plan)
        streams = self.submit(chat, plan)
        events = merged(streams)
        try:
            first = await anext(events)
        except BaseException:
            for stream in streams:
                stream.cancel()
            await events.aclose()
            raise
        if isinstance(first[1], Failed):
            for stream in streams:
                stream.cancel()
            await events.aclose()
            raise from_engine_error(first[1].error)
        forced = bool(plan.forced)
        calls = [ToolCallStream(incremental=forced) for _ in streams] if plan.parses_calls else None
        return self._sse(streams, events, first, chat.include_usage(), chat.wanted_logprobs() >= 0, calls)

    async def _sse(
        self,
        streams: list[RequestStream],
        events: AsyncGenerator[tuple[int, Event]],
        first: tuple[int, Event],
        include_usage: bool,
        with_logprobs: bool,
        calls: list[ToolCallStream] | None,
    ) -> AsyncIterator[bytes]:
        """Choices interleaved by index, each opening with its role and closing with its finish; one [DONE].
        With tools, each choice's text goes through its own tool-call parser (OpenAI's tool_calls deltas)."""
        rid, created, name = streams[0].request.id, int(time.time()), self.name
        finished: list[Finished] = []
        try:
            for index in range(len(streams)):
                yield chunk_frame(rid, created, name, Delta(role="assistant", content=""), index=index)
            index, event = first
            while True:
                if isinstance(event, TextDelta):
                    if calls is not None:
                        for delta in calls[index].push(event.text):
                            yield chunk_frame(rid, created, name, delta, index=index)
                    else:
                        logprobs = ChoiceLogprobs(self.tokens.entries(event.logprobs)) if with_logprobs else UNSET
                        delta = Delta(content=event.text)
                        yield chunk_frame(rid, created, name, delta, index=index, logprobs=logprobs)
                elif isinstance(event, Finished):
                    finished.append(event)
                    reason = event.reason
                    if calls is not None:
                        for delta in calls[index].finish():
                            yield chunk_frame(rid, created, name, delta, index=index)
                        reason = "tool_calls" if calls[index].calls else reason
                    yield chunk_frame(rid, created, name, Delta(), reason, index=index)
                    if len(finished) == len(streams):
                        if include_usage:
                            yield chunk_frame(rid, created, name, Delta(), usage=_usage(finished))
                        yield DONE
                        return
                else:
                    yield error_frame(from_engine_error(event.error))
                    yield DONE
                    return
                index, event = await anext(events)
        finally:
            for stream in streams:
                stream.cancel()
            await events.aclose()

    def memory(self) -> dict[str, Any]:
        snapshot = asdict(self.ledger.snapshot())
        engine = self.engine
        stats, pace = engine.stats, engine.pace
        prefill = pace.prefill_cost
        snapshot.update(
            queue_depth=stats.queue_depth,
            running=stats.running,
            queue_size=self.config.queue_size,
            # What the router predicts a new request's wait here from (router.dispatch.preflight.predicted_wait):
            max_batch_size=engine.max_batch,
            queued_prompt_tokens=engine.queued_prompt_tokens(),
            step_seconds=pace.step_seconds,
            # A prefill forward (several prompts packed) costs an overhead plus its tokens at a rate (workers.pace).
            prefill_tokens_per_second=prefill.tokens_per_second if prefill else None,
            prefill_overhead_seconds=prefill.overhead_seconds if prefill else None,
            prefill_tokens_per_forward=engine.prefill_budget,
            mean_completion_tokens=pace.mean_completion_tokens,
            max_tokens_default=self.config.max_tokens_default,
            max_tokens_cap=self.config.max_tokens_cap,
            max_seq_len=self.config.max_seq_len,  # the context window: the router skips us for longer requests
            at=time.time(),  # when it was taken: the router ignores stale readings
        )
        return snapshot

    def status(self) -> dict[str, Any]:
        return {"memory": self.memory(), "engine": asdict(self.engine.stats)}


def _usage(finished: Any) -> Usage:
    """All choices' completion tokens; the prompt, shared by them, counted once (as OpenAI counts it)."""
    events: list[Finished] = list(finished)
    prompt = events[0].prompt_tokens
    completion = sum(e.completion_tokens for e in events)
    return Usage(prompt, completion, prompt + completion)


def _penalty(value: float | UnsetType | None) -> float:
    return float(value) if isinstance(value, float | int) else 0.0


def _logit_bias(raw: Raw | UnsetType, vocab_size: int) -> dict[int, float]:
    """`logit_bias` as {token id: value clamped to [-100, 100]}; a key that is not a token id is a 400."""
    if raw is UNSET:
        return {}
    try:
        value = msgspec.json.decode(raw, type=dict[str, float] | None)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidRequest(f"'logit_bias' must map token ids to numbers: {exc}", param="logit_bias") from exc
    bias: dict[int, float] = {}
    for key, number in (value or {}).items():
        token = int(key) if key.strip().isdecimal() else -1
        if not 0 <= token < vocab_size:
            raise InvalidRequest(
                f"'logit_bias' key {key!r} is not a token id of this model (0 to {vocab_size - 1})", param="logit_bias"
            )
        bias[token] = min(LOGIT_BIAS_LIMIT, max(-LOGIT_BIAS_LIMIT, number))
    return bias
