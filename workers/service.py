"""The worker's serving logic between HTTP and the engine: chat template, limits, OpenAI responses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from router.core.workers import CONTEXT_LENGTH_EXCEEDED, WorkerConfig
from router.wire.errors import InvalidRequest
from router.wire.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    Delta,
    ResponseMessage,
    Usage,
    completion_id,
)
from router.wire.sse import DONE, chunk_frame, error_frame
from workers.engine import Engine, Failed, Finished, GenerationRequest, RequestStream, TextDelta
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
        wanted = chat.token_limit() or self.config.max_tokens_default
        max_tokens = min(wanted, self.config.max_tokens_cap, room)
        temperature = (
            1.0 if chat.temperature is None or not isinstance(chat.temperature, float | int) else chat.temperature
        )
        top_p = chat.top_p if isinstance(chat.top_p, float | int) else 1.0
        seed = chat.seed if isinstance(chat.seed, int) else None
        stop = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop) if isinstance(chat.stop, list) else []
        sampling = SamplingParams(float(temperature), float(top_p), seed)
        min_tokens = max_tokens if chat.ignore_eos is True else min(max_tokens, chat.min_tokens or 0)
        constraint = None
        if plan.forced or plan.schema is not None:
            if self.grammar is None:
                raise InvalidRequest("this worker has no grammar engine", param="response_format")
            constraint = plan.constraint(self.grammar)
        request_id = completion_id()
        return GenerationRequest(request_id, prompt, max_tokens, sampling, stop, min_tokens, constraint)

    def submit(self, chat: ChatCompletionRequest, plan: ToolPlan | None = None) -> RequestStream:
        request = self.generation_request(chat, plan)
        return self.engine.submit(request, asyncio.get_running_loop())

    async def complete(self, chat: ChatCompletionRequest) -> ChatCompletion:
        plan = plan_for(chat)
        stream = self.submit(chat, plan)
        parts: list[str] = []
        try:
            while True:
                event = await stream.next()
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, Finished):
                    usage = Usage(
                        event.prompt_tokens, event.completion_tokens, event.prompt_tokens + event.completion_tokens
                    )
                    text = "".join(parts)
                    message: ResponseMessage = ResponseMessage(content=text)
                    reason = event.reason
                    if plan.parses_calls:
                        content, calls = parse_calls(text)
                        if calls:
                            message, reason = ToolMessage(content=content, tool_calls=calls), "tool_calls"
                    choice = Choice(0, message, reason)
                    return ChatCompletion(stream.request.id, int(time.time()), self.name, [choice], usage)
                else:
                    raise from_engine_error(event.error)
        finally:
            stream.cancel()  # a no-op once finished; stops generation if the client went away

    async def open_stream(self, chat: ChatCompletionRequest) -> AsyncIterator[bytes]:
        """Submit and wait for the first event, so a refusal or an early failure is still a plain 503."""
        plan = plan_for(chat)
        stream = self.submit(chat, plan)
        try:
            first = await stream.next()
        except BaseException:
            stream.cancel()
            raise
        if isinstance(first, Failed):
            stream.cancel()
            raise from_engine_error(first.error)
        return self._sse(stream, first, chat.include_usage(), ToolCallStream() if plan.parses_calls else None)

    async def _sse(
        self, stream: RequestStream, first: Any, include_usage: bool, calls: ToolCallStream | None
    ) -> AsyncIterator[bytes]:
        rid, created, name = stream.request.id, int(time.time()), self.name

        def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None) -> bytes:
            return chunk_frame(rid, created, name, delta, finish, usage)

        try:
            yield chunk(Delta(role="assistant", content=""))
            event = first
            while True:
                if isinstance(event, TextDelta):
                    for delta in calls.push(event.text) if calls else [Delta(content=event.text)]:
                        yield chunk(delta)
                elif isinstance(event, Finished):
                    for delta in calls.finish() if calls else []:
                        yield chunk(delta)
                    yield chunk(Delta(), "tool_calls" if calls and calls.calls else event.reason)
                    if include_usage:
                        total = event.prompt_tokens + event.completion_tokens
                        yield chunk(Delta(), usage=Usage(event.prompt_tokens, event.completion_tokens, total))
                    yield DONE
                    return
                else:
                    yield error_frame(from_engine_error(event.error))
                    yield DONE
                    return
                event = await stream.next()
        finally:
            stream.cancel()

    def memory(self) -> dict[str, Any]:
        snapshot = asdict(self.ledger.snapshot())
        stats = self.engine.stats
        snapshot.update(
            queue_depth=stats.queue_depth,
            running=stats.running,
            queue_size=self.config.queue_size,
            max_tokens_default=self.config.max_tokens_default,
            max_tokens_cap=self.config.max_tokens_cap,
            max_seq_len=self.config.max_seq_len,  # the context window: the router skips us for longer requests
            at=time.time(),  # when it was taken: the router ignores stale readings
        )
        return snapshot

    def status(self) -> dict[str, Any]:
        return {"memory": self.memory(), "engine": asdict(self.engine.stats)}
