"""A small, fast OpenAI-compatible stand-in server for tests, benchmarks and demos.

It answers chat completions by echoing the last user message, word by word when streaming, answers
embeddings with vectors made from each text's hash (the same text, the same vector), and records what
it received (`GET /_standin/requests`) so tests can check what the router forwarded; `POST /_standin/script`
queues scripted failures (`StandinSettings.script`). Plain ASGI, so it costs as little CPU as possible when used
as a benchmark upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from router.wire.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    Delta,
    ErrorBody,
    ErrorDetail,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
    decode_chat_request,
    encode,
)
from router.wire.sse import DONE, chunk_frame

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class StandinSettings:
    name: str = "standin"
    """The model name it reports, and the prefix of every answer."""
    chunk_delay_s: float = 0.0
    """Pause between streamed chunks."""
    response_delay_s: float = 0.0
    """Pause before answering (both modes)."""
    fail_status: int | None = None
    """Answer every chat request with this status instead."""
    max_words: int = 64
    record: int = 200
    """How many received requests to keep for `GET /_standin/requests`."""
    hold_after_first: threading.Event | None = None
    """When given, a stream pauses after its first word until the event is set (tests of pass-through)."""
    script: deque[str] = field(default_factory=deque)
    """What the next chat requests get, one entry each, then normal answers: `ok`, a status (`503`),
    `429:<retry-after>`, `slow:<seconds>` (then an answer), `die:<words>` (a stream breaks off after
    that many words, as a worker that crashed). Tests of retries, breakers and failover script it."""


class StandinDied(Exception):
    """Raised inside the app to break a stream off mid-way (uvicorn then drops the connection)."""


@dataclass
class Standin:
    settings: StandinSettings = field(default_factory=StandinSettings)
    received: deque[dict[str, Any]] = field(default_factory=deque)
    model_lists: int = 0
    """`GET /models` answered (what a readiness probe asks; `GET /_standin/stats`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path.endswith("/chat/completions") and method == "POST":
            body = await _read_body(receive)
            await self._chat(scope, body, send)
        elif path.endswith("/embeddings") and method == "POST":
            await self._embeddings(scope, await _read_body(receive), send)
        elif path.endswith("/models"):
            self.model_lists += 1
            await _send_json(send, 200, encode(ModelList([ModelCard(id=self.settings.name)])))
        elif path == "/_standin/stats":
            await _send_json(send, 200, encode({"model_lists": self.model_lists}))
        elif path == "/_standin/script" and method == "POST":
            steps = msgspec.json.decode(await _read_body(receive), type=list[str])
            self.settings.script.extend(steps)
            await _send_json(send, 200, encode({"queued": len(self.settings.script)}))
        elif path == "/_standin/requests":
            await _send_json(send, 200, encode(list(self.received)))
        elif path in ("/health", "/ready"):
            await _send_json(send, 200, b'{"status":"ok"}')
        else:
            await _send_json(send, 404, encode(ErrorBody(ErrorDetail("not found", "not_found_error"))))

    def _record(self, scope: Scope, body: bytes) -> None:
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        record = {"headers": headers, "body": msgspec.json.decode(body) if body else None, "at": time.monotonic()}
        record["path"] = scope["path"]
        self.received.append(record)
        while len(self.received) > self.settings.record:
            self.received.popleft()

    async def _embeddings(self, scope: Scope, body: bytes, send: Send) -> None:
        self._record(scope, body)
        request = msgspec.json.decode(body)
        texts = request["input"] if isinstance(request["input"], list) else [request["input"]]
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [b / 255 for b in hashlib.sha256(str(t).encode()).digest()[:8]],
            }
            for i, t in enumerate(texts)
        ]
        tokens = sum(len(str(t).split()) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        await _send_json(send, 200, encode({"object": "list", "data": data, "model": request["model"], "usage": usage}))

    async def _chat(self, scope: Scope, body: bytes, send: Send) -> None:
        settings = self.settings
        self._record(scope, body)
        step = settings.script.popleft() if settings.script else "ok"
        action, _, argument = step.partition(":")
        if settings.response_delay_s:
            await asyncio.sleep(settings.response_delay_s)
        if action == "slow":
            await asyncio.sleep(float(argument))
        status = settings.fail_status or (int(action) if action.isdigit() else None)
        if status is not None:
            error = ErrorBody(ErrorDetail(f"stand-in failing with {status}", "server_error"))
            extra = [(b"retry-after", argument.encode())] if argument else []
            await _send_json(send, status, encode(error), extra)
            return
        die_after = int(argument) if action == "die" else None
        try:
            request = decode_chat_request(body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            await _send_json(send, 400, encode(ErrorBody(ErrorDetail(str(exc), "invalid_request_error"))))
            return
        words = self._answer(request)
        prompt_tokens = sum(len(m.text().split()) for m in request.messages)
        usage = Usage(prompt_tokens, len(words), prompt_tokens + len(words))
        created = int(time.time())
        if not request.stream:
            message = ResponseMessage(content=" ".join(words))
            completion = ChatCompletion("chatcmpl-standin", created, settings.name, [Choice(0, message, "stop")], usage)
            await _send_json(send, 200, encode(completion))
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})

        async def emit(delta: Delta, finish: str | None = None, with_usage: Usage | None = None) -> None:
            body = chunk_frame("chatcmpl-standin", created, settings.name, delta, finish, with_usage)
            await send({"type": "http.response.body", "body": body, "more_body": True})

        await emit(Delta(role="assistant", content=""))
        for i, word in enumerate(words):
            if i == die_after:
                raise StandinDied(f"scripted: the stream breaks off after {i} words")
            if settings.chunk_delay_s:
                await asyncio.sleep(settings.chunk_delay_s)
            await emit(Delta(content=word if i == 0 else " " + word))
            if i == 0 and settings.hold_after_first is not None:
                await asyncio.to_thread(settings.hold_after_first.wait)
        await emit(Delta(), "stop")
        if request.include_usage():
            await emit(Delta(), with_usage=usage)
        await send({"type": "http.response.body", "body": DONE, "more_body": False})

    def _answer(self, request: ChatCompletionRequest) -> list[str]:
        limit = request.token_limit() or self.settings.max_words
        words = [f"[{self.settings.name}]", *request.last_user_text().split()]
        return words[: max(1, min(limit, self.settings.max_words))]


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_json(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
