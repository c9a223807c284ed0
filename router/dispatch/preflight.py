"""Pre-flight: will a request fit on a worker? Decided from telemetry, before anything is sent.

First its context window: a request whose prompt (the router's estimate) and max_tokens exceed the
window (the worker's reported `max_seq_len`, else the tier's `context_window`) is skipped, whatever the
freshness of the reading (a worker's window does not change while it runs).

Then its memory: a request needs (prompt tokens + the tokens it may generate) x the tier's KV bytes per
token, the same worst case the worker's VRAM ledger reserves on admission (workers.ledger). A worker whose fresh
telemetry shows less free memory than that (less what this router already sent it since), or a full
queue, is skipped. Unknown telemetry (none, or stale) is not a refusal: the worker is tried and its
answer decides.

Then its queue, when `max_wait` (`routing.max_queue_wait_s`) is set: a worker where the request would wait longer
than that for its first token (router.dispatch.wait.predicted_wait) is refused with `queue_wait`, but kept in
`Plan.waiting`, fastest first: the chain tries the rest of the chain first and comes back to wait on it rather
than fail. A wait the reading cannot predict is not a refusal. A pure function of its inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from router.dispatch.fleet import Endpoint, Telemetry
from router.dispatch.wait import predicted_wait
from router.wire.protocol import DEFAULT_MAX_TOKENS

CONTEXT_LENGTH = "context_length"
"""The refusal of a tier whose context window the request exceeds: the only one that is the request's fault."""
QUEUE_WAIT = "queue_wait"
"""The refusal of a worker whose queue would hold the request longer than `routing.max_queue_wait_s`."""


@dataclass(frozen=True, slots=True)
class Target:
    endpoint: Endpoint
    needed: int
    """Estimated KV-cache bytes (0 when the worker's telemetry is unknown)."""
    known: bool


@dataclass(frozen=True, slots=True)
class Plan:
    targets: list[Target]
    """Workers to try, best first: known to fit (least loaded first), then unknown ones."""
    refused: str | None = None
    """Why no worker can take it (`queue_wait`, `vram_exhausted`, `queue_full`, `not_ready`, `context_length`) when
    `targets` is empty; `queue_wait` whenever some worker was refused for that alone, `context_length` only when
    that is every worker's reason."""
    detail: str = ""
    waiting: list[Target] = field(default_factory=list)
    """Workers refused only for `queue_wait`, shortest predicted wait first: worth waiting on when no other tier
    can answer."""


def needed_bytes(telemetry: Telemetry, prompt_tokens: int, max_tokens: int | None) -> int:
    wanted = max_tokens or telemetry.max_tokens_default or DEFAULT_MAX_TOKENS
    if telemetry.max_tokens_cap is not None:
        wanted = min(wanted, telemetry.max_tokens_cap)
    return (prompt_tokens + wanted) * telemetry.kv_bytes_per_token


def context_needed(prompt_tokens: int, max_tokens: int | None, cap: int | None = None) -> int:
    """Tokens of context a request takes: its prompt, and what it asks to generate (at least one token, at most
    what the worker caps generation at)."""
    wanted = max_tokens or 1
    if cap is not None:
        wanted = min(wanted, cap)
    return prompt_tokens + max(wanted, 1)


def plan(
    endpoints: list[Endpoint],
    fresh: Callable[[Endpoint], Telemetry | None],
    in_flight: Callable[[Endpoint], int],
    prompt_tokens: int,
    max_tokens: int | None,
    context_window: int | None = None,
    *,
    sent_since: Callable[[Endpoint], int] | None = None,
    max_wait: float | None = None,
) -> Plan:
    """Where to send a request: `context_window` is the tier's configured one, for workers not reporting theirs;
    `sent_since`: requests this router sent each worker after its reading; `max_wait`: the longest predicted wait
    for a first token a worker may have (None: any)."""
    fits: list[tuple[tuple[int, int], Target]] = []
    slow: list[tuple[float, Target]] = []
    unknown: list[Target] = []
    refusals: list[tuple[str, str]] = []
    for endpoint in endpoints:
        if not endpoint.ready:
            refusals.append(("not_ready", f"{endpoint.base_url} is not ready"))
            continue
        reading = endpoint.telemetry
        window = reading.max_seq_len if reading is not None and reading.max_seq_len else context_window
        needed_tokens = context_needed(prompt_tokens, max_tokens, reading.max_tokens_cap if reading else None)
        if window is not None and needed_tokens > window:
            detail = f"~{needed_tokens} tokens (prompt and max_tokens) exceed its context window of {window}"
            refusals.append((CONTEXT_LENGTH, f"{endpoint.base_url}: {detail}"))
            continue
        telemetry = fresh(endpoint)
        if telemetry is None:
            unknown.append(Target(endpoint, 0, known=False))
            continue
        needed = needed_bytes(telemetry, prompt_tokens, max_tokens)
        free = telemetry.free - in_flight(endpoint)
        if telemetry.queue_size is not None and telemetry.queue_depth >= telemetry.queue_size:
            refusals.append(("queue_full", f"{endpoint.base_url}: {telemetry.queue_depth} queued"))
        elif needed > free:
            refusals.append(("vram_exhausted", f"{endpoint.base_url}: needs {needed} bytes, {max(free, 0)} free"))
        else:
            target = Target(endpoint, needed, known=True)
            ahead = sent_since(endpoint) if sent_since is not None else 0
            wait = predicted_wait(telemetry, prompt_tokens, ahead) if max_wait is not None else None
            if max_wait is not None and wait is not None and wait > max_wait:
                detail = f"{endpoint.base_url}: ~{wait:.2f} s to a first token, more than {max_wait:g} s"
                refusals.append((QUEUE_WAIT, detail))
                slow.append((wait, target))
                continue
            load = (telemetry.queue_depth + telemetry.running, -free)
            fits.append((load, target))
    targets = [target for _, target in sorted(fits, key=lambda pair: pair[0])] + unknown
    if targets:
        return Plan(targets)
    waiting = [target for _, target in sorted(slow, key=lambda pair: pair[0])]
    reasons = [reason for reason, _ in refusals]
    # The request's own fault only if alone; queue_wait first, since waiting is what the tier still offers.
    order = (QUEUE_WAIT, "vram_exhausted", "queue_full", "not_ready", CONTEXT_LENGTH)
    worst = next((r for r in order if r in reasons), "not_ready")
    return Plan([], worst, "; ".join(detail for _, detail in refusals) or "no worker known", waiting)
