"""The OpenAI endpoints served through the chat pipeline: a request is translated into a chat request, routed and
served by `RoutingService.chat` like any other (classifier, rules, guardrails, capabilities, fallback, metrics),
and its answer, whole or streamed, translated back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping

from router.dispatch.outcome import Answer, StreamAnswer
from router.pipeline import RoutingService
from router.wire.completions import decode_completion_request, rewrite_chat_body, rewrite_chat_chunk
from router.wire.decode import parse_body
from router.wire.errors import InvalidRequest, RouterError
from router.wire.protocol import encode
from router.wire.responses import decode_responses_request, new_response
from router.wire.responses_out import ResponseEvents, response_from_chat
from router.wire.sse import DONE, complete_frames, frame, frame_data


class TranslatingService:
    """`/v1/completions` and `/v1/responses` over the chat pipeline it is given."""

    def __init__(self, service: RoutingService) -> None:
        self.service = service

    @contextlib.asynccontextmanager
    async def authenticated_errors(self, headers: Mapping[str, str]) -> AsyncIterator[None]:
        """A request that cannot be translated is a 400 only for a caller with a valid key (else the 401): the key
        is checked on this error path alone, as `RoutingService.chat` checks it before anything else."""
        try:
            yield
        except InvalidRequest:
            await self.service.authenticate(headers.get("authorization"))
            raise

    async def completions(self, body: bytes, headers: Mapping[str, str]) -> Answer | StreamAnswer:
        """A legacy text completion: the prompt is served as a chat request's single user message."""
        async with self.authenticated_errors(headers):
            request = parse_body(body, decode_completion_request, "completion request").to_chat()
        answer = await self.service.chat(encode(request), headers)
        if isinstance(answer, Answer):
            return Answer(rewrite_chat_body(answer.body), answer.outcome)
        answer.chunks = rewrite_frames(answer.chunks, rewrite_chat_chunk)
        return answer

    async def responses(self, body: bytes, headers: Mapping[str, str]) -> Answer | StreamAnswer:
        """A stateless response: input items and instructions served as a chat request's messages."""
        async with self.authenticated_errors(headers):
            request = parse_body(body, decode_responses_request, "responses request")
            chat = request.to_chat()
        answer = await self.service.chat(encode(chat), headers)
        response = new_response(request, request.model)
        if isinstance(answer, Answer):
            return Answer(response_from_chat(response, answer.body), answer.outcome)
        answer.chunks = response_events(answer.chunks, ResponseEvents(response))
        return answer


async def rewrite_frames(chunks: AsyncIterator[bytes], rewrite: Callable[[bytes], bytes]) -> AsyncIterator[bytes]:
    """Each complete SSE frame's data rewritten; comments (keep-alives) and `[DONE]` kept as they are."""
    async for complete in complete_frames(chunks):
        data = frame_data(complete)
        if not data:
            yield complete
        else:
            yield DONE if data == b"[DONE]" else frame(rewrite(data))


async def response_events(chunks: AsyncIterator[bytes], events: ResponseEvents) -> AsyncIterator[bytes]:
    """A chat stream as the Responses event sequence (no `[DONE]`: the Responses API ends with the stream)."""
    for event in events.start():
        yield event
    try:
        async for complete in complete_frames(chunks):
            data = frame_data(complete)
            if not data:
                yield complete  # a keep-alive comment
                continue
            if data == b"[DONE]":
                break
            for event in events.feed(data):
                yield event
            if events.response.status == "failed":
                return
    except RouterError as exc:
        for event in events.fail(exc.message, exc.code, exc.param):
            yield event
        return
    for event in events.end():
        yield event
