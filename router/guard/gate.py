"""One request's input rails, asked at each hop of its chain (router.dispatch.gate.HopGate).

The LLM-free input rails screen every request, whatever its tier, from the moment dispatch starts; the flows
NeMo's runtime runs (e.g. `self check input`) are added for hops to guarded tiers (`GuardPolicy.guarded`). A hop
may be sent the request before the verdict when speculative start allows it for that tier (local tiers by
default, never a remote one unless `speculative_remote`); nothing it answers is released before `cleared`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from router.core.config import Config
from router.dispatch.gate import HopRefused
from router.guard.rails import Guard, GuardVerdict
from router.wire.protocol import RouteDecision


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """Which hops of one request get the full rails, and which may start before the input verdict."""

    config: Config
    decision: RouteDecision

    def guarded(self, tier: str) -> bool:
        """Full rails (every input rail, the output rails) on a hop to `tier`: everywhere with `scope: all`, on
        tiers with `guardrails: true`, and on every hop of a request whose rule asks for them."""
        settings = self.config.guardrails
        return settings.scope == "all" or self.config.tiers[tier].guardrails or self.decision.guardrails

    def speculative(self, tier: str) -> bool:
        settings = self.config.guardrails
        if self.config.tiers[tier].kind == "remote":
            return settings.speculative_remote
        return settings.speculative

    def any_guarded(self, tiers: list[str]) -> bool:
        return any(self.guarded(tier) for tier in tiers)


class InputGate:
    """The input verdicts of one request, each computed once, on first need; `close` cancels what is left."""

    def __init__(self, guard: Guard, texts: list[str], policy: GuardPolicy) -> None:
        self.guard = guard
        self.texts = texts
        self.policy = policy
        self.screening: asyncio.Task[GuardVerdict] = asyncio.ensure_future(guard.screen(texts))
        self._full: asyncio.Task[GuardVerdict] | None = None

    @property
    def rest_needed(self) -> bool:
        """Are there input rails beyond the screen (NeMo-run flows) for guarded hops?"""
        return bool(self.guard.interpreted["input"])

    async def before_send(self, tier: str) -> None:
        if self.policy.guarded(tier) and self.rest_needed:
            self._start_full()
        if not self.policy.speculative(tier):
            await self.cleared(tier)

    async def cleared(self, tier: str) -> None:
        verdict = await self.verdict(tier)
        if verdict.blocked:
            raise HopRefused(verdict)

    async def verdict(self, tier: str) -> GuardVerdict:
        """The verdict that decides whether what `tier` answers may be released."""
        screened = await asyncio.shield(self.screening)
        if screened.blocked or not (self.policy.guarded(tier) and self.rest_needed):
            return screened
        rest = await asyncio.shield(self._start_full())
        return GuardVerdict(rest.blocked, rest.rail, screened.seconds + rest.seconds)

    def screened_block(self) -> GuardVerdict | None:
        """The screen's block, if it has finished and blocked (a generation then stops at once)."""
        if self.screening.done() and not self.screening.cancelled():
            verdict = self.screening.result()
            return verdict if verdict.blocked else None
        return None

    def _start_full(self) -> asyncio.Task[GuardVerdict]:
        if self._full is None:
            self._full = asyncio.ensure_future(self.guard.check_rest(self.texts))
        return self._full

    async def close(self) -> None:
        for task in (self.screening, self._full):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
