"""The queue-wait estimator: seconds before a new request's first token on a worker, from its telemetry alone."""

from __future__ import annotations

import pytest

from router.dispatch.fleet import Telemetry
from router.dispatch.wait import predicted_wait
from router.wire.protocol import DEFAULT_MAX_TOKENS


def reading(**fields: object) -> Telemetry:
    base: dict[str, object] = {
        "free": 10**9,
        "kv_bytes_per_token": 1000,
        "max_batch_size": 4,
        "running": 0,
        "queue_depth": 0,
        "step_seconds": 0.02,
        "prefill_tokens_per_second": 1000.0,
        "mean_completion_tokens": 100.0,
    }
    base.update(fields)
    return Telemetry(**base)  # type: ignore[arg-type]


def test_a_free_slot_means_only_the_prefill_of_its_own_prompt() -> None:
    assert predicted_wait(reading(running=3), prompt_tokens=500) == pytest.approx(0.5)
    assert predicted_wait(reading(running=3, prefill_tokens_per_second=None), 500) == 0.0  # rate unknown: left out


def test_a_full_batch_with_a_queue_waits_for_slots_then_prefills_what_is_ahead() -> None:
    telemetry = reading(running=4, queue_depth=2, queued_prompt_tokens=200)
    # 3 of the 4 running requests must end (2 queued ahead, then this one): one ends every 100/4 steps of 20 ms,
    # so 3 * 25 * 0.02 = 1.5 s; then 200 queued prompt tokens and its own 100 at 1,000 tokens/s: 0.3 s.
    assert predicted_wait(telemetry, prompt_tokens=100) == pytest.approx(1.8)


def test_requests_sent_since_the_reading_are_ahead_and_taken_to_be_its_size() -> None:
    telemetry = reading(running=2, queued_prompt_tokens=0)
    assert predicted_wait(telemetry, 100) == pytest.approx(0.1)  # 2 slots free
    # 3 sent since: two take the free slots, the third and this one wait for 2 ends (2 * 25 * 0.02 = 1 s);
    # prefill: 3 * 100 ahead + 100 = 0.4 s.
    assert predicted_wait(telemetry, 100, sent_since=3) == pytest.approx(1.4)


def test_without_a_queued_token_count_each_queued_request_is_taken_to_be_its_size() -> None:
    telemetry = reading(running=4, queue_depth=1, step_seconds=None, max_batch_size=8)
    assert predicted_wait(telemetry, 100) == pytest.approx(0.2)  # 4 free slots: (100 + 100) / 1000


def test_a_wait_for_a_slot_with_no_step_measured_yet_is_unknown() -> None:
    assert predicted_wait(reading(running=4, queue_depth=1, step_seconds=None), 100) is None
    assert predicted_wait(reading(running=4, queue_depth=1, step_seconds=0.0), 100) is None


def test_the_answer_length_falls_back_to_the_workers_default_then_the_wire_default() -> None:
    full = {"running": 1, "max_batch_size": 1, "step_seconds": 0.01, "prefill_tokens_per_second": None}
    assert predicted_wait(reading(**full, mean_completion_tokens=None, max_tokens_default=50), 1) == pytest.approx(0.5)
    assert predicted_wait(reading(**full, mean_completion_tokens=None), 1) == pytest.approx(DEFAULT_MAX_TOKENS * 0.01)


def test_without_a_batch_capacity_a_queue_means_the_batch_is_full() -> None:
    unknown = {"max_batch_size": None, "prefill_tokens_per_second": None}
    assert predicted_wait(reading(**unknown, running=2), 100) == 0.0  # no queue: a slot is free
    # a queue of 1 behind 2 running: both must end, one every 100 / 2 steps of 20 ms
    assert predicted_wait(reading(**unknown, running=2, queue_depth=1), 100) == pytest.approx(2.0)


def test_the_wait_grows_with_the_queue_and_the_step_time() -> None:
    waits = [predicted_wait(reading(running=4, queue_depth=q), 100) for q in range(6)]
    assert waits == sorted(waits) and len(set(waits)) == 6
    slow = predicted_wait(reading(running=4, queue_depth=2, step_seconds=0.04), 100)
    fast = predicted_wait(reading(running=4, queue_depth=2, step_seconds=0.02), 100)
    assert slow is not None and fast is not None and slow > fast


def test_a_burst_of_short_prompts_is_predicted_by_packed_forwards_not_one_forward_each() -> None:
    """Issue 18's burst: 190 chats of 40 tokens at a worker whose forwards cost 40 ms plus 20 us a token, 512
    tokens to a forward, with a 30 ms decode step between two forwards. Counted as 190 forwards (or at a rate
    measured on short prompts alone, 1,000 tokens/s) the burst reads as 7.6 s; packed it takes 15 forwards."""
    # The burst's other 189 hold batch slots, their prompts being prefilled: `running`, and their prompt tokens queued.
    packed = reading(
        running=191,
        max_batch_size=256,
        step_seconds=0.03,
        prefill_tokens_per_second=50_000.0,
        prefill_overhead_seconds=0.04,
        prefill_tokens_per_forward=512,
        queued_prompt_tokens=189 * 40,
    )
    # 7,600 tokens: 15 forwards x 40 ms + 7,600 / 50,000 s + 14 steps x 30 ms between them.
    assert predicted_wait(packed, prompt_tokens=40) == pytest.approx(15 * 0.04 + 7600 / 50_000 + 14 * 0.03)
    one_rate = reading(running=191, max_batch_size=256, prefill_tokens_per_second=1000.0, queued_prompt_tokens=189 * 40)
    assert predicted_wait(one_rate, prompt_tokens=40) == pytest.approx(7.6)


def test_a_long_prompt_takes_its_forwards_and_the_decode_steps_between_them_only_while_something_decodes() -> None:
    cost = {"prefill_tokens_per_second": 10_000.0, "prefill_overhead_seconds": 0.01, "prefill_tokens_per_forward": 512}
    idle = reading(running=0, **cost)
    # 4,096 tokens: 8 forwards of 10 ms plus 0.41 s of tokens; nothing decodes, so no steps between them.
    assert predicted_wait(idle, 4096) == pytest.approx(8 * 0.01 + 0.4096)
    busy = reading(running=3, **cost)  # a free slot, but three streams decode: a 20 ms step after each forward
    assert predicted_wait(busy, 4096) == pytest.approx(8 * 0.01 + 0.4096 + 7 * 0.02)
    # Without a published budget (another engine): one forward per prompt, no interleaved steps counted.
    other = reading(running=3, prefill_tokens_per_second=10_000.0, prefill_overhead_seconds=0.01)
    assert predicted_wait(other, 4096) == pytest.approx(0.01 + 0.4096)
    assert predicted_wait(reading(running=3, prefill_tokens_per_second=10_000.0), 4096) == pytest.approx(0.4096)
