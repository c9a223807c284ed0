"""Recent averages from an engine's cumulative counters: what its last few dozen events say, not its lifetime.

Engines publish histograms as running totals (a `_sum` and a `_count` since start). Their lifetime mean follows a
change of load ever more slowly the longer the engine runs: after a day at batch 2, an hour at batch 32 barely moves
it. So an adapter keeps, per figure, the increments between its successive readings and averages the newest ones
that together hold at least `WINDOW` events (whole readings: a reading's increment is not split). Like our workers'
rolling averages (workers.pace) it keeps its last value while nothing happens (an idle engine's next request runs at
about that pace), starts from the lifetime totals of its first reading until newer events outweigh them, and starts
over when the totals go down (the engine restarted).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW = 64
"""Events an average covers at least: the same as our workers' (workers.pace.WINDOW), for the same reasons."""


@dataclass
class RecentRatio:
    """The ratio of two running totals over their recent increments: a mean (`_sum` over `_count`, whose events
    are the count) or a rate (tokens over seconds, whose events are the requests both were observed for)."""

    window: int = WINDOW
    _last: tuple[float, float, float] | None = None
    _increments: deque[tuple[float, float, float]] = field(default_factory=deque)

    def update(self, numerator: float, denominator: float, events: float) -> float | None:
        """Take a reading of the three running totals; returns the recent ratio (None before any event)."""
        now = (numerator, denominator, events)
        last = self._last
        self._last = now
        if last is None or events < last[2] or numerator < last[0] or denominator < last[1]:
            self._increments.clear()  # first reading, or counters reset: the lifetime totals are all there is
            step = now
        else:
            step = (numerator - last[0], denominator - last[1], events - last[2])
        if step[2] > 0:
            self._increments.append(step)
            while len(self._increments) > 1 and self._events() - self._increments[0][2] >= self.window:
                self._increments.popleft()
        return self.value

    @property
    def value(self) -> float | None:
        numerator = sum(n for n, _, _ in self._increments)
        denominator = sum(d for _, d, _ in self._increments)
        return numerator / denominator if denominator > 0 else None

    @property
    def events(self) -> int:
        """Events the current value averages over."""
        return int(self._events())

    def _events(self) -> float:
        return sum(e for _, _, e in self._increments)
