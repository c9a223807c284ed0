"""Dispatch: send a request to its tier, falling back along the decision's chain before any byte is lost.

A tier that refuses (connection refused, 503/429, e.g. `vram_exhausted` or a full queue) or does not
answer before its first-byte timeout is skipped for the next tier in the chain; the route records it.
Errors after an answer has started are not retried here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec

from router.backends import TierBackend, UpstreamReply, UpstreamStream
from router.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from router.protocol import ChatCompletionRequest, RouteDecision, encode

log = logging.getLogger(__name__)

T = TypeVar("T")
FALLBACK_ON = (UpstreamUnavailable, UpstreamTimeout)


@dataclass
class Answer:
    """A complete reply for the client: the body as it goes out, and the router's headers."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamAnswer:
    """A stream for the client: SSE frames, and the router's headers (sent before the first frame)."""

    chunks: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request was served, and the fallback that got it there."""

    tier: str
    fallback_from: str | None = None
    reason: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {"x-router-tier": self.tier}
        if self.fallback_from:
            headers["x-router-fallback"] = f"{self.fallback_from}->{self.tier}"
            headers["x-router-fallback-reason"] = self.reason or ""
        return headers


class Dispatcher:
    def __init__(self, backends: Mapping[str, TierBackend]) -> None:
        self.backends = dict(backends)

    def payload(self, request: ChatCompletionRequest, tier: str) -> bytes:
        return encode(msgspec.structs.replace(request, model=self.backends[tier].config.model))

    async def complete(self, request: ChatCompletionRequest, decision: RouteDecision) -> tuple[UpstreamReply, Route]:
        return await self._along_chain(decision, lambda tier: self.backends[tier].complete(self.payload(request, tier)))

    async def open_stream(
        self, request: ChatCompletionRequest, decision: RouteDecision
    ) -> tuple[UpstreamStream, Route]:
        return await self._along_chain(
            decision, lambda tier: self.backends[tier].open_stream(self.payload(request, tier))
        )

    async def _along_chain(self, decision: RouteDecision, call: Callable[[str], Awaitable[T]]) -> tuple[T, Route]:
        chain = [decision.tier, *decision.fallback]
        first_error: UpstreamError | None = None
        for i, tier in enumerate(chain):
            try:
                result = await call(tier)
            except FALLBACK_ON as exc:
                first_error = first_error or exc
                if i + 1 < len(chain):
                    log.warning("tier %s failed before answering (%s); falling back to %s", tier, exc, chain[i + 1])
                continue
            if i == 0:
                return result, Route(tier)
            assert first_error is not None
            return result, Route(tier, decision.tier, _reason(first_error))
        assert first_error is not None
        raise first_error


def _reason(error: UpstreamError) -> str:
    return error.code or type(error).__name__
