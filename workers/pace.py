"""The engine's recent pace: wall time per decode step, the cost of a prefill forward, and answer length.

What the router needs to predict how long a new request would wait here (router.dispatch.wait). Each figure
covers the last `window` events, so it follows load changes within a few seconds of traffic, and keeps its last
value while the worker is idle (an idle worker's next request runs at about that pace). Timings are host wall
clock around work the engine already waits for.

A prefill forward packs several prompts' chunks (workers.prefill), so its cost is modelled as a fixed part per
forward (launches, reading the weights, the host's work) plus a part per token:

    seconds = overhead + tokens / rate

fitted by least squares over the recent forwards. A rate measured as tokens over seconds on short prompts alone
folds the overhead into the rate (a 40-token prompt in 40 ms reads as 1,000 tokens/s, though most of those 40 ms
is spent whatever the size): it then predicts a burst of short prompts, prefilled together, far too slow, and a
long prompt too slow as well. Until the window holds forwards of sizes at least a factor of two apart, the
overhead cannot be told from the rate: it is reported as 0 and the rate as tokens over seconds, as before.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TypeVar

WINDOW = 64
"""Events each average covers: enough to smooth one slow step, few enough to follow a change in batch size."""
SPREAD = 2.0
"""The largest recent forward must hold this many times the tokens of the smallest before the fit is trusted."""
T = TypeVar("T")


@dataclass(frozen=True)
class PrefillCost:
    """What a prefill forward costs: `overhead_seconds` per forward plus its tokens at `tokens_per_second`."""

    overhead_seconds: float
    tokens_per_second: float


def fit_prefill(forwards: list[tuple[int, float]]) -> PrefillCost | None:
    """The cost model fitted to (tokens, seconds) forwards; None when there are none (or no time measured).

    Kept physical: a negative fitted overhead (noise) is taken as 0 and the rate refitted through the origin; a
    slope that is not positive, or sizes too alike to separate the two parts, fall back to tokens over seconds."""
    tokens = sum(n for n, _ in forwards)
    seconds = sum(s for _, s in forwards)
    if not forwards or seconds <= 0 or tokens <= 0:
        return None
    ratio = PrefillCost(0.0, tokens / seconds)
    sizes = [n for n, _ in forwards]
    if max(sizes) < SPREAD * max(min(sizes), 1):
        return ratio
    count = len(forwards)
    mean_n, mean_s = tokens / count, seconds / count
    var = sum((n - mean_n) ** 2 for n, _ in forwards)
    slope = sum((n - mean_n) * (s - mean_s) for n, s in forwards) / var
    if slope <= 0:
        return ratio
    overhead = mean_s - slope * mean_n
    if overhead < 0:
        slope = sum(n * s for n, s in forwards) / sum(n * n for n, _ in forwards)
        overhead = 0.0
    return PrefillCost(overhead, 1.0 / slope)


@dataclass
class Pace:
    """Rolling figures, written by the engine thread and read from the event loop (a heartbeat, /v1/memory)."""

    _steps: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    _prefills: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=WINDOW))
    _answers: deque[int] = field(default_factory=lambda: deque(maxlen=WINDOW))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def decoded(self, seconds: float) -> None:
        """One decode step took `seconds` of wall time, host work for its tokens included."""
        self._push(self._steps, seconds)

    def prefilled(self, tokens: int, seconds: float) -> None:
        """One prefill forward of `tokens` prompt tokens, all prompts packed in it together, took `seconds` (the
        first tokens of the prompts it completed sampled too)."""
        self._push(self._prefills, (tokens, seconds))

    def finished(self, completion_tokens: int) -> None:
        """A request ended after generating `completion_tokens`."""
        self._push(self._answers, completion_tokens)

    @property
    def step_seconds(self) -> float | None:
        """Mean wall time of a recent decode step (one token for every running request); None before any."""
        with self._lock:
            return sum(self._steps) / len(self._steps) if self._steps else None

    @property
    def prefill_cost(self) -> PrefillCost | None:
        """The recent prefill forwards' cost model; None before any."""
        with self._lock:
            forwards = list(self._prefills)
        return fit_prefill(forwards)

    @property
    def prefill_tokens_per_second(self) -> float | None:
        """Prompt tokens a prefill forward takes per second beyond its overhead, recently; None before any."""
        cost = self.prefill_cost
        return cost.tokens_per_second if cost else None

    @property
    def prefill_overhead_seconds(self) -> float | None:
        """What a prefill forward costs whatever its size, recently; None before any."""
        cost = self.prefill_cost
        return cost.overhead_seconds if cost else None

    @property
    def mean_completion_tokens(self) -> float | None:
        """Mean tokens generated by a recently finished request; None before any finished."""
        with self._lock:
            return sum(self._answers) / len(self._answers) if self._answers else None

    def _push(self, history: deque[T], value: T) -> None:
        with self._lock:  # the readers sum a deque this thread appends to
            history.append(value)
