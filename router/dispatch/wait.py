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
    - Then prefill: T tokens, the prompts ahead (the worker's `queued_prompt_tokens`, the unprefilled rest of
      prompts being prefilled included; else each request ahead taken to be the size of this one) and this one's.
      The worker packs them into forwards of at most P tokens (`prefill_tokens_per_forward`), several prompts to
      a forward, so they take F = ceil(T / P) forwards, each costing `prefill_overhead_seconds` plus its tokens
      at `prefill_tokens_per_second` (workers.pace fits both to its recent forwards): F * overhead + T / rate.
      While anything decodes (requests running or ahead), the worker runs one decode step between two forwards,
      so F - 1 steps more. An engine that publishes no P is taken to run one forward per prompt, and no
      interleaved steps are counted; an unknown overhead counts as 0 (a rate measured as tokens over time then
      holds it). The prefill term is left out while the rate is unknown (it is the smaller term: prefill runs
      hundreds of times faster than decode per token).

      Why per forward: a burst of short chats used to be predicted from a rate measured on short prompts alone,
      where a forward's fixed cost dominates (say 40 ms for 40 tokens, "1,000 tokens/s"), so 190 of them read
      as 7.6 s and spilled; packed 512 tokens to a forward at 40 ms + 20 us a token they take 15 forwards,
      0.75 s, or 1.2 s with a 30 ms decode step between two forwards.

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
        wait += _prefill_seconds(telemetry, ahead_tokens + prompt_tokens, ahead + 1, rate)
    return wait


def _prefill_seconds(telemetry: Telemetry, tokens: int, prompts: int, rate: float) -> float:
    """`tokens` of `prompts` prompts through the worker's prefill forwards (the model above)."""
    per_forward = telemetry.prefill_tokens_per_forward or 0
    packed = per_forward > 0
    forwards = -(-tokens // per_forward) if packed else prompts
    seconds = forwards * max(telemetry.prefill_overhead_seconds or 0.0, 0.0) + tokens / rate
    step = telemetry.step_seconds
    if packed and (telemetry.running > 0 or prompts > 1) and step is not None and step > 0:
        seconds += (forwards - 1) * step
    return seconds
