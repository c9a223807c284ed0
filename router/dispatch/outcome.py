"""What happened to one request: the Outcome (served where, after which fallbacks, guard verdict, tokens, time),
and the reply types that carry it. Response headers and metrics are both rendered from the Outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from router.wire.protocol import RouteDecision

if TYPE_CHECKING:
    from router.dispatch.backends import UpstreamStream


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request was served, and the fallback that got it there."""

    tier: str
    fallback_from: str | None = None
    reason: str | None = None


@dataclass(slots=True)
class Outcome:
    """One request's outcome, filled in as it passes through the pipeline, read by headers and metrics alike."""

    decision: RouteDecision | None = None
    route: Route | None = None
    """None until a tier took the request (a block before generation, or every tier failed)."""
    failed_on: str | None = None
    """The tier whose failure ended the request, when no tier served it."""
    guard: Literal["passed", "screened", "blocked"] | None = None
    """None when no guard is loaded; `screened` when only the LLM-free input rails ran (an unguarded tier's hop),
    `passed` when every rail of the hop did."""
    guard_rail: str | None = None
    status: int = 200
    stream: bool = False
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    ttft: float | None = None

    @property
    def tier(self) -> str:
        """The tier that served it, else the one that failed it, else the one it was decided for, else "none"."""
        if self.route is not None:
            return self.route.tier
        if self.failed_on is not None:
            return self.failed_on
        return self.decision.tier if self.decision is not None else "none"

    @property
    def rule(self) -> str:
        return self.decision.rule if self.decision is not None else "none"

    @property
    def fallback(self) -> str | None:
        """`<from>-><to>` when the request was served by a later tier of its chain."""
        route = self.route
        return f"{route.fallback_from}->{route.tier}" if route and route.fallback_from else None

    @property
    def blocked_by(self) -> str | None:
        return self.guard_rail if self.guard == "blocked" else None

    def headers(self) -> dict[str, str]:
        """The `x-router-*` response headers."""
        headers: dict[str, str] = {}
        if self.decision is not None:
            headers["x-router-tier"] = self.decision.tier
            headers["x-router-rule"] = self.decision.rule
            headers["x-router-score"] = f"{self.decision.score:.4f}"
        if self.route is not None:
            headers["x-router-tier"] = self.route.tier
            if self.route.fallback_from:
                headers["x-router-fallback"] = f"{self.route.fallback_from}->{self.route.tier}"
                headers["x-router-fallback-reason"] = self.route.reason or ""
        if self.guard is not None:
            headers["x-router-guardrail"] = self.guard
            if self.guard == "blocked":
                headers["x-router-guardrail-rail"] = self.guard_rail or ""
        return headers


@dataclass
class Answer:
    """A complete reply for the client: the body as it goes out, and its outcome."""

    body: bytes
    outcome: Outcome = field(default_factory=Outcome)


@dataclass
class StreamAnswer:
    """A stream for the client: SSE frames, and its outcome (headers go out before the first frame)."""

    chunks: AsyncIterator[bytes]
    outcome: Outcome = field(default_factory=Outcome)


class RoutedStream:
    """An open upstream stream and what its end gives back (a concurrency slot, in-flight bytes)."""

    def __init__(self, upstream: UpstreamStream, on_end: Callable[[], None]) -> None:
        self._upstream = upstream
        self._on_end: Callable[[], None] | None = on_end

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._upstream.chunks():
                yield chunk
        finally:
            self._end()

    async def aclose(self) -> None:
        try:
            await self._upstream.aclose()
        finally:
            self._end()

    def _end(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()
