"""Pre-flight decisions from worker telemetry: a pure function of the endpoints, their readings and the request."""

from __future__ import annotations

from router.dispatch.fleet import Endpoint, Telemetry
from router.dispatch.preflight import needed_bytes, plan

KV = 1000  # bytes per token


def worker(name: str, free: int, *, queue: int = 0, queue_size: int = 8, running: int = 0) -> Endpoint:
    telemetry = Telemetry(free=free, kv_bytes_per_token=KV, queue_depth=queue, running=running, queue_size=queue_size)
    return Endpoint("large", f"http://{name}/v1", "redis", telemetry)


def decide(endpoints: list[Endpoint], prompt: int = 100, max_tokens: int | None = 400, stale=(), sent=None):  # type: ignore[no-untyped-def]
    sent = sent or {}
    return plan(
        endpoints,
        lambda e: None if e.base_url in stale else e.telemetry,
        lambda e: sent.get(e.base_url, 0),
        prompt,
        max_tokens,
    )


def test_a_request_that_fits_goes_to_the_worker() -> None:
    chosen = decide([worker("a", free=600 * KV)])
    assert [t.endpoint.base_url for t in chosen.targets] == ["http://a/v1"]
    assert chosen.targets[0].needed == 500 * KV and chosen.refused is None


def test_a_request_that_does_not_fit_is_refused_before_it_is_sent() -> None:
    refused = decide([worker("a", free=499 * KV)])
    assert refused.targets == [] and refused.refused == "vram_exhausted"
    assert "needs 500000 bytes, 499000 free" in refused.detail


def test_bytes_this_router_sent_since_the_reading_count_against_free_memory() -> None:
    assert decide([worker("a", free=900 * KV)]).targets
    assert decide([worker("a", free=900 * KV)], sent={"http://a/v1": 500 * KV}).refused == "vram_exhausted"


def test_a_full_queue_is_refused() -> None:
    assert decide([worker("a", free=10**9, queue=8, queue_size=8)]).refused == "queue_full"


def test_stale_telemetry_is_unknown_so_the_worker_is_tried() -> None:
    chosen = decide([worker("a", free=0)], stale={"http://a/v1"})
    assert [t.known for t in chosen.targets] == [False]


def test_the_least_loaded_worker_comes_first_and_unknown_ones_last() -> None:
    endpoints = [
        worker("busy", free=10**9, queue=3),
        worker("stale", free=10**9),
        worker("roomy", free=10**9),
        worker("tight", free=600 * KV),
        worker("full", free=10 * KV),
    ]
    chosen = decide(endpoints, stale={"http://stale/v1"})
    order = [t.endpoint.base_url.split("/")[2] for t in chosen.targets]
    assert order == ["roomy", "tight", "busy", "stale"]  # less queued first, then more free; "full" is out


def test_no_limit_in_the_request_means_the_workers_default_capped() -> None:
    telemetry = Telemetry(free=0, kv_bytes_per_token=KV, max_tokens_default=256, max_tokens_cap=300)
    assert needed_bytes(telemetry, 100, None) == 356 * KV
    assert needed_bytes(telemetry, 100, 10_000) == 400 * KV  # the worker would cap it at 300


def test_the_fleet_treats_old_readings_as_unknown_and_counts_what_it_sent_since(shipped_config) -> None:  # type: ignore[no-untyped-def]
    from router.dispatch.fleet import Fleet

    now = [1000.0]
    fleet = Fleet(shipped_config, None, None, clock=lambda: now[0])
    endpoint = Endpoint("large", "http://a/v1", "poll", Telemetry(free=10**6, kv_bytes_per_token=KV, taken_at=999.0))
    assert fleet.fresh(endpoint) is not None
    ticket = fleet.start(endpoint, 5000)
    assert fleet.in_flight_bytes(endpoint) == 5000
    fleet.finish(endpoint, ticket)
    assert fleet.in_flight_bytes(endpoint) == 0
    now[0] += shipped_config.discovery.stale_after_s + 1
    assert fleet.fresh(endpoint) is None  # stale: the worker will be tried, and its answer decides
    assert [e.source for e in fleet.endpoints("large")] == ["static"]


def windowed(name: str, window: int | None, *, cap: int | None = None) -> Endpoint:
    telemetry = Telemetry(free=10**9, kv_bytes_per_token=KV, max_seq_len=window, max_tokens_cap=cap)
    return Endpoint("small", f"http://{name}/v1", "poll", telemetry)


def test_a_request_beyond_the_workers_context_window_is_refused_for_context_length() -> None:
    assert decide([windowed("a", 500)], prompt=100, max_tokens=400).targets  # 500 fits exactly
    refused = decide([windowed("a", 500)], prompt=101, max_tokens=400)
    assert refused.targets == [] and refused.refused == "context_length"
    assert "~501 tokens (prompt and max_tokens) exceed its context window of 500" in refused.detail


def test_the_context_window_is_known_from_a_stale_reading_and_the_generation_counts_as_capped() -> None:
    assert decide([windowed("a", 500)], prompt=600, stale={"http://a/v1"}).refused == "context_length"
    assert decide([windowed("a", 500, cap=50)], prompt=450, max_tokens=10_000).targets  # generates 50 at most
    assert decide([windowed("a", 500)], prompt=499, max_tokens=None).targets  # room for one token
    assert decide([windowed("a", 500)], prompt=500, max_tokens=None).refused == "context_length"


def test_the_tiers_configured_window_applies_until_the_worker_reports_its_own() -> None:
    static = Endpoint("remote", "http://r/v1", "static")
    assert plan([static], lambda e: None, lambda e: 0, 900, 200, 1000).refused == "context_length"
    assert plan([static], lambda e: None, lambda e: 0, 700, 200, 1000).targets
    assert plan([static], lambda e: None, lambda e: 0, 10**6, 200, None).targets  # unknown: tried
    reported = windowed("a", 4000)
    assert plan([reported], lambda e: e.telemetry, lambda e: 0, 900, 200, 1000).targets  # its own window wins


def test_context_length_is_the_tiers_reason_only_when_every_worker_gives_it() -> None:
    mixed = decide([windowed("a", 100), worker("b", free=10 * KV)])
    assert mixed.refused == "vram_exhausted"
    both = decide([windowed("a", 100), windowed("b", 200)])
    assert both.refused == "context_length"


def busy(name: str, *, queue: int, running: int = 1, step: float | None = 0.01, free: int = 10**9) -> Endpoint:
    """A worker of batch 1 whose answers run 100 tokens: each request ahead of a new one costs ~1 s at 10 ms a step."""
    telemetry = Telemetry(
        free=free,
        kv_bytes_per_token=KV,
        queue_depth=queue,
        running=running,
        queue_size=64,
        max_batch_size=1,
        step_seconds=step,
        mean_completion_tokens=100,
    )
    return Endpoint("large", f"http://{name}/v1", "redis", telemetry)


def waiting(endpoints: list[Endpoint], max_wait: float | None, sent: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    sent = sent or {}
    return plan(
        endpoints,
        lambda e: e.telemetry,
        lambda e: 0,
        100,
        50,
        sent_since=lambda e: sent.get(e.base_url, 0),
        max_wait=max_wait,
    )


def test_a_worker_whose_queue_would_hold_the_request_too_long_is_refused_for_queue_wait() -> None:
    refused = waiting([busy("a", queue=3)], max_wait=2.0)  # 3 queued + 1 running ahead: ~4 s
    assert refused.targets == [] and refused.refused == "queue_wait"
    assert "http://a/v1: ~4.00 s to a first token, more than 2 s" in refused.detail
    assert [t.endpoint.base_url for t in refused.waiting] == ["http://a/v1"]  # still there to wait on
    assert waiting([busy("a", queue=3)], max_wait=5.0).targets  # within the limit
    assert waiting([busy("a", queue=3)], max_wait=None).targets  # no limit: it waits however long


def test_requests_sent_since_the_reading_count_toward_the_wait() -> None:
    idle = busy("a", queue=0, running=0)
    assert waiting([idle], max_wait=2.0).targets
    assert waiting([idle], max_wait=2.0, sent={"http://a/v1": 3}).refused == "queue_wait"


def test_an_unpredictable_wait_is_not_a_refusal() -> None:
    assert waiting([busy("a", queue=30, step=None)], max_wait=0.5).targets  # no decode step measured yet


def test_the_quick_worker_is_chosen_and_slow_ones_wait_in_order_of_their_wait() -> None:
    chosen = waiting([busy("slow", queue=5), busy("quick", queue=0, running=0)], max_wait=2.0)
    assert [t.endpoint.base_url for t in chosen.targets] == ["http://quick/v1"]
    none_quick = waiting([busy("slower", queue=9), busy("slow", queue=5), busy("full", queue=0, free=0)], 2.0)
    assert none_quick.refused == "queue_wait"  # what the tier still offers, over the full one's vram_exhausted
    assert [t.endpoint.base_url for t in none_quick.waiting] == ["http://slow/v1", "http://slower/v1"]
    assert "vram_exhausted" not in none_quick.refused and "needs" in none_quick.detail
