"""The engine's recent pace: rolling means that follow the last events and say None before any."""

from __future__ import annotations

import pytest

from workers.pace import WINDOW, Pace


def test_nothing_measured_is_none_not_zero() -> None:
    pace = Pace()
    assert pace.step_seconds is None
    assert pace.prefill_tokens_per_second is None
    assert pace.mean_completion_tokens is None


def test_the_means_cover_the_last_window_of_events() -> None:
    pace = Pace()
    for _ in range(WINDOW):
        pace.decoded(1.0)
    for _ in range(WINDOW // 2):
        pace.decoded(0.5)  # the batch grew lighter: half the window has the new pace
    assert pace.step_seconds == pytest.approx(0.75)
    pace.prefilled(300, 0.1)
    pace.prefilled(100, 0.1)
    assert pace.prefill_tokens_per_second == pytest.approx(2000.0)  # tokens over seconds, not a mean of rates
    for tokens in (10, 20, 30):
        pace.finished(tokens)
    assert pace.mean_completion_tokens == 20
