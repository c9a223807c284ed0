"""How long a new request would wait for its first token on a worker, predicted from the worker's telemetry."""

from __future__ import annotations

from router.dispatch.fleet import Telemetry
from router.wire.protocol import DEFAULT_MAX_TOKENS


def predicted_wait(telemetry: Telemetry, prompt_tokens: int, sent_since: int = 0) -> float | None:
    """Seconds from sending a request of `prompt_tokens` to `telemetry`'s worker until its first token; None when
    the reading cannot say (no decode step measured yet while the request would have to wait for a batch slot).

    The model (a continuous-batching engine serving its queue first come, first served):
    - Ahead of the request: the worker's queued requests plus `sent_since`, those this router sent after the
      reading was taken (each is queued or running by now; counting them keeps a burst from all picking the
      worker one stale reading called idle).
    - Slots: with `max_batch_size` B and `running` decoding, B - running are free. The request waits for a slot
      only when the requests ahead fill the free ones: then `ahead + 1 - free` running requests must end first.
      Without a reported B, a worker with a queue is taken to be full and one without to have a free slot.
    - Slots free up at a steady rate: a request holds its slot for G decode steps (G: the mean answer length of
      recently finished requests, else the worker's default max_tokens, else the wire default), and with B rows
      whose starts are staggered, one ends every G / B steps. So k ends take k * G / B * `step_seconds`. The step
      time is the recent one at the current batch, which is what the remaining steps will cost.
    - Then prefill: the prompts ahead (the worker's `queued_prompt_tokens`, else each request ahead taken to be
      the size of this one) and this one's, at `prefill_tokens_per_second`; left out while that rate is unknown
      (it is the smaller term: prefill runs hundreds of times faster than decode per token).

    Assumptions worth knowing: the queue is FIFO and nothing ahead is cancelled; requests that finish early
    (an end-of-sequence token) are what G averages over; the decode step does not slow down as the batch fills
    (it grows slowly on a GPU, where a step is bound by reading the weights). It is an estimate to compare with
    `routing.max_queue_wait_s`, not a promise.
    """
    ahead = max(telemetry.queue_depth, 0) + max(sent_since, 0)
    capacity = telemetry.max_batch_size
    if capacity is not None and capacity > 0:
        free = max(capacity - telemetry.running, 0)
    else:
        capacity, free = max(telemetry.running, 1), (0 if telemetry.queue_depth > 0 else 1)
    must_end = max(ahead + 1 - free, 0)
    wait = 0.0
    if must_end:
        step = telemetry.step_seconds
        if step is None or step <= 0:
            return None
        answer = telemetry.mean_completion_tokens or telemetry.max_tokens_default or DEFAULT_MAX_TOKENS
        wait += must_end * answer / capacity * step
    rate = telemetry.prefill_tokens_per_second
    if rate is not None and rate > 0:
        queued = telemetry.queued_prompt_tokens
        ahead_tokens = (queued if queued is not None else telemetry.queue_depth * prompt_tokens) + (
            max(sent_since, 0) * prompt_tokens
        )
        wait += (ahead_tokens + prompt_tokens) / rate
    return wait
