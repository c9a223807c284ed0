"""A request's choices (`n`) as one stream of events, and their tokens' log-probabilities in OpenAI's shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from typing import Any

from router.wire.protocol import TokenLogprob as TokenEntry
from router.wire.protocol import TopLogprob
from workers.engine import Event, Failed, Finished, RequestStream
from workers.processors import TokenLogprob


async def merged(streams: list[RequestStream]) -> AsyncGenerator[tuple[int, Event]]:
    """(choice index, event) from every stream as they come, until each has finished or failed."""
    if len(streams) == 1:  # the common case: no tasks
        while True:
            event = await streams[0].next()
            yield 0, event
            if isinstance(event, Finished | Failed):
                return
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        while True:
            event = await stream.next()
            queue.put_nowait((index, event))
            if isinstance(event, Finished | Failed):
                return

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            index, event = await queue.get()
            left -= isinstance(event, Finished | Failed)
            yield index, event
    finally:
        for task in tasks:
            task.cancel()


class TokenNames:
    """Each token id's text and UTF-8 bytes, as `logprobs` name them; decoded once per id.

    A token is decoded on its own, so a token holding part of a multi-byte character names the replacement
    character (its bytes are then those of U+FFFD, not the token's raw bytes)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._names: dict[int, tuple[str, list[int]]] = {}

    def name(self, token: int) -> tuple[str, list[int]]:
        named = self._names.get(token)
        if named is None:
            text = self._tokenizer.decode([token], skip_special_tokens=False)
            named = self._names[token] = (text, list(text.encode("utf-8")))
        return named

    def entries(self, logprobs: Iterable[TokenLogprob]) -> list[TokenEntry]:
        out = []
        for entry in logprobs:
            text, raw = self.name(entry.token)
            top = []
            for token, logprob in entry.top:
                name, name_bytes = self.name(token)
                top.append(TopLogprob(name, logprob, name_bytes))
            out.append(TokenEntry(text, entry.logprob, raw, top))
        return out
