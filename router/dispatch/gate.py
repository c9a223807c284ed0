"""What the chain walk asks before each hop: may this tier be sent the request now? The guard answers it
(router.guard.gate); dispatch knows only this interface, and that a refusal is not a tier's failure."""

from __future__ import annotations

from typing import Protocol


class HopRefused(Exception):
    """The request may not go to any tier (the input rails blocked it): the walk stops and nothing more is sent.

    Not an `UpstreamError`: no tier failed, so nothing falls back, counts a failure or retries."""

    def __init__(self, verdict: object) -> None:
        super().__init__("the input rails blocked the request")
        self.verdict = verdict
        """The guard's verdict (router.guard.rails.GuardVerdict), carried to whoever writes the refusal."""


class HopGate(Protocol):
    async def before_send(self, tier: str) -> None:
        """Return once the request may be sent to `tier` (at once where generating may start before the rails
        finish: nothing is released before they pass); raise `HopRefused` if it may not."""

    async def cleared(self, tier: str) -> None:
        """Return once what `tier` answers may be released to the client; raise `HopRefused` if it may not."""
