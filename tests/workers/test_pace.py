"""The engine's recent pace: rolling means that follow the last events and say None before any, and a prefill
forward's cost fitted as an overhead per forward plus tokens at a rate."""

from __future__ import annotations

import pytest

from workers.pace import WINDOW, Pace, PrefillCost, fit_prefill


def test_nothing_measured_is_none_not_zero() -> None:
    pace = Pace()
    assert pace.step_seconds is None
    assert pace.prefill_cost is None
    assert pace.mean_completion_tokens is None


def test_the_means_cover_the_last_window_of_events() -> None:
    pace = Pace()
    for _ in range(WINDOW):
        pace.decoded(1.0)
    for _ in range(WINDOW // 2):
        pace.decoded(0.5)  # the batch grew lighter: half the window has the new pace
    assert pace.step_seconds == pytest.approx(0.75)
    pace.prefilled(150, 0.1)
    pace.prefilled(100, 0.1)  # sizes too alike to tell the overhead from the rate: tokens over seconds
    assert pace.prefill_cost == PrefillCost(0.0, pytest.approx(1250.0))
    for tokens in (10, 20, 30):
        pace.finished(tokens)
    assert pace.mean_completion_tokens == 20


def test_forwards_of_different_sizes_separate_the_overhead_from_the_rate() -> None:
    """40 ms a forward plus 20 us a token: short prompts alone read as ~1,000 tokens/s, the fit says 50,000."""
    pace = Pace()
    for tokens in (40, 40, 45, 512, 300, 128):
        pace.prefilled(tokens, 0.040 + tokens * 20e-6)
    cost = pace.prefill_cost
    assert cost is not None
    assert cost.overhead_seconds == pytest.approx(0.040) and cost.tokens_per_second == pytest.approx(50_000)
    for _ in range(WINDOW):
        pace.prefilled(40, 0.0408)  # the window now holds one size only: back to tokens over seconds
    assert pace.prefill_cost == PrefillCost(0.0, pytest.approx(40 / 0.0408))


def test_the_fit_stays_physical_on_noisy_forwards() -> None:
    # Larger forwards measured faster (noise, another process): no negative rate, tokens over seconds instead.
    assert fit_prefill([(100, 0.05), (400, 0.04)]) == PrefillCost(0.0, pytest.approx(500 / 0.09))
    # A line through these crosses below zero: no negative overhead, the rate fitted through the origin instead.
    cost = fit_prefill([(100, 0.001), (200, 0.010), (400, 0.030)])
    assert cost is not None and cost.overhead_seconds == 0.0
    through_origin = (100**2 + 200**2 + 400**2) / (100 * 0.001 + 200 * 0.010 + 400 * 0.030)
    assert cost.tokens_per_second == pytest.approx(through_origin)
    assert fit_prefill([]) is None and fit_prefill([(10, 0.0)]) is None
