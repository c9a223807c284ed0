"""Telemetry adapters (router.dispatch.telemetry): vLLM-, TGI- and Ollama-shaped stand-ins on loopback, read into
pre-flight's terms; a request that would not fit a tier's free KV cache (or window), or would wait too long in its
queue, goes to the next tier before anything is sent to it, and `/ready` says how each reading was derived."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from router.core.config import ConfigError, TelemetrySource, TierConfig, load_config
from router.dispatch.fleet import Telemetry
from router.dispatch.telemetry import TelemetryAdapter, adapter_for, prometheus
from router.dispatch.telemetry.recent import WINDOW, RecentRatio
from router.dispatch.wait import predicted_wait
from tests.engines import EngineStandin, Served, engine, ollama_pages, tgi_pages, vllm_pages
from tests.helpers import REPO, RouterFactory, router_yaml, write_config
from tests.servers import ServerThread

MODEL = "Qwen/Qwen2.5-7B-Instruct"
ADMIN = "telemetry-admin"
ENGINE_KEY = "sk-engine-key"
GIB = 1024**3


def adapter_of(kind: TelemetrySource, server: ServerThread, model: str = MODEL) -> TelemetryAdapter:
    adapter = adapter_for(TierConfig(base_url=f"{server.url}/v1", model=model, kind="remote", telemetry=kind))
    assert adapter is not None
    return adapter


def read_with(adapter: TelemetryAdapter) -> dict[str, Any]:
    """One reading by `adapter` (kept between readings, as the fleet keeps it between polls)."""

    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            return await adapter.read(client, {}, 5.0)

    return asyncio.run(go())


def read(kind: TelemetrySource, server: ServerThread, model: str = MODEL) -> dict[str, Any]:
    return read_with(adapter_of(kind, server, model))


def test_vllm_usage_fraction_becomes_tokens_of_headroom() -> None:
    pages = vllm_pages(MODEL, usage=0.75, blocks=256, block_size=16, running=3, waiting=5, max_model_len=8192)
    with ServerThread(engine("large", pages)) as server:
        reading = read("vllm", server)
    assert reading["free"] == 1024 and reading["kv_bytes_per_token"] == 1 and reading["total"] == 4096
    assert (reading["queue_depth"], reading["running"], reading["max_seq_len"]) == (5, 3, 8192)
    assert "75.0% used of 4096 tokens" in reading["note"] and "1024 tokens free" in reading["note"]
    telemetry = Telemetry.parse(reading, time.time())
    assert telemetry is not None and telemetry.free == 1024 and telemetry.note == reading["note"]


def test_vllm_without_its_cache_size_or_metrics_is_not_guessed() -> None:
    with ServerThread(engine("large", vllm_pages(MODEL, usage=0.5, blocks=None))) as server:
        reading = read("vllm", server)
    assert (reading["free"], reading["kv_bytes_per_token"]) == (0, 0), "a request needs 0 of 0: never refused"
    assert "size not reported" in reading["note"] and reading["max_seq_len"] == 8192
    with ServerThread(engine("large", {})) as plain, pytest.raises(ValueError, match="/metrics: 404"):
        read("vllm", plain)  # not a vLLM server: the fleet counts its telemetry as unknown
    guarded = engine("large", vllm_pages(MODEL, usage=0.5, blocks=256))
    guarded.api_key = ENGINE_KEY
    with ServerThread(guarded) as server, pytest.raises(ValueError, match="/v1/models: 401"):
        read("vllm", server)  # without the tier's key (the router sends it: test_the_reading_follows_the_engine)


def test_tgi_batch_budget_and_concurrency_limit() -> None:
    pages = tgi_pages(
        budget=16000, batch_max_tokens=12000, queued=2, batch_size=6, max_total_tokens=4096, max_concurrent_requests=10
    )
    with ServerThread(engine("large", pages)) as server:
        reading = read("tgi", server)
    assert (reading["free"], reading["kv_bytes_per_token"], reading["total"]) == (4000, 1, 16000)
    assert (reading["queue_depth"], reading["running"], reading["max_seq_len"]) == (2, 6, 4096)
    assert reading["queue_size"] == 4, "6 running of 10: 4 more may queue before TGI answers 429"
    assert "12000 of max_batch_total_tokens 16000" in reading["note"]
    with ServerThread(engine("large", tgi_pages(budget=None, batch_max_tokens=0))) as server:
        unknown = read("tgi", server)
    assert (unknown["free"], unknown["kv_bytes_per_token"]) == (0, 0) and "not reported" in unknown["note"]


def test_ollama_loaded_models_and_their_vram() -> None:
    loaded = [
        {"name": "llama3.1:8b", "size": 6 * GIB, "size_vram": 4 * GIB, "context_length": 4096},
        {"name": "qwen2.5:latest", "size": 5 * GIB, "size_vram": 5 * GIB},
    ]
    with ServerThread(engine("large", ollama_pages(loaded))) as server:
        partial = read("ollama", server, "llama3.1:8b")
        whole = read("ollama", server, "qwen2.5")
        missing = read("ollama", server, "mistral")
    assert partial["max_seq_len"] == 4096 and "4.0 of 6.0 GiB in VRAM, the rest on CPU" in partial["note"]
    assert "all in VRAM" in whole["note"] and "max_seq_len" not in whole
    assert "mistral not loaded" in missing["note"] and "llama3.1:8b, qwen2.5:latest" in missing["note"]
    assert all((r["free"], r["kv_bytes_per_token"]) == (0, 0) for r in (partial, whole, missing))


def test_vllm_queue_fields_come_from_its_histograms() -> None:
    """The decode step from the inter-token latency, the prefill rate from prompt tokens over prefill time, the
    answer length from generated tokens: summed over engines (engine 1's are empty here), as predicted_wait reads
    them. vLLM publishes no batch limit nor queued prompt tokens: they stay unknown, and the note says why."""
    served = Served().then(steps=1000, step_s=0.04, finished=50, prompt=800, prefill_s=0.2, answer=300)
    pages = vllm_pages(MODEL, usage=0.5, blocks=256, running=4, waiting=2, engines=2, served=served)  # each engine
    with ServerThread(engine("large", pages)) as server:
        reading = read("vllm", server)
    assert reading["step_seconds"] == pytest.approx(0.04)
    assert reading["prefill_tokens_per_second"] == pytest.approx(800 / 0.2)
    assert reading["mean_completion_tokens"] == pytest.approx(300)
    assert "max_batch_size" not in reading and "queued_prompt_tokens" not in reading
    note = reading["note"]
    assert "decode step 40.0 ms" in note and "prefill 4000 tokens/s" in note and "answers 300 tokens" in note, note
    assert "max_num_seqs not published: a queue means a full batch" in note
    telemetry = Telemetry.parse(reading, time.time())
    assert telemetry is not None and (telemetry.queue_depth, telemetry.running) == (4, 8)
    assert telemetry.step_seconds == pytest.approx(0.04) and telemetry.max_batch_size is None
    # The wait it predicts: 4 ahead and the batch full (capacity = the 8 running), so 5 must end, each after
    # 300 steps, one every 300 / 8 steps: 5 x 300 / 8 x 0.04 s, then 5 prompts of 100 tokens at 4000 tokens/s.
    assert predicted_wait(telemetry, 100) == pytest.approx(5 * 300 / 8 * 0.04 + 500 / 4000)


def test_vllm_before_any_request_predicts_nothing() -> None:
    """A fresh server's histograms are empty: nothing measured, so no wait is predicted (never a refusal)."""
    with ServerThread(engine("large", vllm_pages(MODEL, usage=0.0, blocks=256, waiting=4))) as server:
        reading = read("vllm", server)
    assert reading["step_seconds"] is None and reading["prefill_tokens_per_second"] is None
    assert reading["mean_completion_tokens"] is None
    assert "decode step not measured yet" in reading["note"] and "no answer finished yet" in reading["note"]
    telemetry = Telemetry.parse(reading, time.time())
    assert telemetry is not None and predicted_wait(telemetry, 100) is None


def test_vllm_pace_is_the_recent_one_not_the_lifetime_mean() -> None:
    """A day at 20 ms a step, then the batch grows to 100 ms a step: the reading follows within WINDOW tokens
    instead of staying near the lifetime mean, keeps its value while idle, and starts over after a restart."""
    day = Served().then(steps=100_000, step_s=0.02, finished=1000, prompt=500, prefill_s=0.1, answer=200)
    served = engine("large", vllm_pages(MODEL, usage=0.5, blocks=256, served=day))
    with ServerThread(served) as server:
        adapter = adapter_of("vllm", server)
        assert read_with(adapter)["step_seconds"] == pytest.approx(0.02)  # the first reading: the lifetime totals

        few = day.then(steps=WINDOW // 2, step_s=0.1)
        served.pages.update(vllm_pages(MODEL, usage=0.5, blocks=256, served=few))
        mixed = read_with(adapter)["step_seconds"]
        assert mixed == pytest.approx((day.step_seconds + WINDOW // 2 * 0.1) / (100_000 + WINDOW // 2))

        busy = few.then(steps=WINDOW, step_s=0.1, finished=WINDOW, prompt=1000, prefill_s=0.5, answer=50)
        served.pages.update(vllm_pages(MODEL, usage=0.5, blocks=256, served=busy))
        recent = read_with(adapter)
        assert recent["step_seconds"] == pytest.approx(0.1), "a day of 20 ms steps no longer counts"
        assert recent["mean_completion_tokens"] == pytest.approx(50)
        assert recent["prefill_tokens_per_second"] == pytest.approx(2000)

        idle = read_with(adapter)  # nothing new: the same totals
        assert (idle["step_seconds"], idle["mean_completion_tokens"]) == pytest.approx((0.1, 50))

        restarted = Served().then(steps=10, step_s=0.03, finished=2, prompt=100, prefill_s=0.01, answer=7)
        served.pages.update(vllm_pages(MODEL, usage=0.5, blocks=256, served=restarted))
        after = read_with(adapter)
        assert (after["step_seconds"], after["mean_completion_tokens"]) == pytest.approx((0.03, 7))

        # Before vLLM 0.11 the same histogram was vllm:time_per_output_token_seconds.
        old = vllm_pages(MODEL, usage=0.5, blocks=256, served=day, itl="vllm:time_per_output_token_seconds")
        served.pages.update(old)
        assert read("vllm", server)["step_seconds"] == pytest.approx(0.02)


def test_recent_ratio_windows_whole_readings() -> None:
    ratio = RecentRatio(window=10)
    assert ratio.update(0, 0, 0) is None
    assert ratio.update(100, 10, 10) == 10  # ten events of 10
    assert ratio.update(100 + 5 * 2, 15, 15) == pytest.approx(110 / 15)  # 5 more of 2: fewer than the window
    assert ratio.update(110 + 10 * 2, 25, 25) == pytest.approx(2)  # 10 more: the first ten drop out
    assert ratio.events == 10
    assert ratio.update(130, 25, 25) == pytest.approx(2)  # idle
    assert ratio.update(30, 5, 5) == pytest.approx(6)  # went down: restarted, its totals are all there is


def test_tgi_queue_fields_from_its_decode_steps_and_info() -> None:
    """The decode series of the batch histogram (not its prefill one), the generated tokens, and `/info`'s
    max_batch_size when TGI runs with one; no prefill rate (TGI counts prompts on arrival)."""
    served = Served().then(steps=500, step_s=0.03, finished=20, prompt=900, answer=120)
    pages = tgi_pages(budget=16000, batch_max_tokens=4000, queued=5, batch_size=4, max_batch_size=4, served=served)
    with ServerThread(engine("large", pages)) as server:
        reading = read("tgi", server)
    assert reading["step_seconds"] == pytest.approx(0.03), "the prefill series (0.3 s a batch) is not a step"
    assert reading["mean_completion_tokens"] == pytest.approx(120)
    assert reading["max_batch_size"] == 4 and "prefill_tokens_per_second" not in reading
    assert "decode step 30.0 ms" in reading["note"] and "prefill rate not published" in reading["note"]
    with ServerThread(engine("large", tgi_pages(budget=16000, batch_max_tokens=0))) as server:
        plain = read("tgi", server)
    assert "max_batch_size" not in plain and plain["step_seconds"] is None, "TGI admits by tokens unless told"


def test_prometheus_labels_with_escapes_and_odd_lines() -> None:
    page = 'a{x="q\\"uote",y="c,d"} 1.5\nb 2 1700000000\n# c 3\nnan_metric NaN\nbroken line here\n'
    samples = prometheus.parse(page)
    assert [(s.name, s.labels, s.value) for s in samples] == [("a", {"x": 'q"uote', "y": "c,d"}, 1.5), ("b", {}, 2.0)]


def test_telemetry_is_chosen_per_tier_and_ours_needs_our_workers(tmp_path: Any) -> None:
    shipped = load_config(REPO / "config" / "router.yaml", environ={})
    assert shipped.tiers["small"].telemetry_source() == "ours" and shipped.tiers["remote"].telemetry_source() == "none"
    raw = router_yaml("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1", "http://127.0.0.1:3/v1")
    raw["tiers"]["remote"]["telemetry"] = "ours"
    with pytest.raises(ConfigError, match=r"tiers\.remote\.telemetry"):
        load_config(write_config(tmp_path / "bad.yaml", raw), environ={})
    raw["tiers"]["remote"]["telemetry"] = "triton"
    with pytest.raises(ConfigError, match=r"tiers\.remote\.telemetry"):
        load_config(write_config(tmp_path / "unknown.yaml", raw), environ={})


def engine_router(
    start_router: RouterFactory,
    standins: dict[str, ServerThread],
    kind: str,
    server: ServerThread,
    model: str = MODEL,
    **routing: Any,
) -> ServerThread:
    """A router whose `large` tier is the engine (an OpenAI-compatible `kind: remote` tier read by its adapter),
    falling back to the remote stand-in; `routing` adds to the config's `routing`."""
    raw = router_yaml(f"{standins['small'].url}/v1", f"{server.url}/v1", f"{standins['remote'].url}/v1")
    raw["routing"] = {**raw.get("routing", {}), **routing}
    large = {"kind": "remote", "model": model, "telemetry": kind, "api_key_env": "ENGINE_KEY", "fallback": ["remote"]}
    raw["tiers"]["large"].update(large, guardrails=False)
    raw["tiers"]["remote"]["guardrails"] = False
    raw["server"]["admin_key_env"] = "ADMIN_KEY"
    environ = {"TEST_REMOTE_KEY": "sk-test-secret-key", "ADMIN_KEY": ADMIN, "ENGINE_KEY": ENGINE_KEY}
    return start_router(raw, environ=environ)


def large_reading(router: ServerThread) -> dict[str, Any]:
    ready = httpx.get(f"{router.url}/ready", headers={"authorization": f"Bearer {ADMIN}"}).json()
    found: dict[str, Any] = ready["workers"]["large"][0]
    return found


def post(router: ServerThread, max_tokens: int) -> httpx.Response:
    body = {
        "model": "large",
        "messages": [{"role": "user", "content": "Summarise the plot."}],
        "max_tokens": max_tokens,
    }
    response = httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response


def ask(router: ServerThread, max_tokens: int) -> str:
    content: str = post(router, max_tokens).json()["choices"][0]["message"]["content"]
    return content


def wait_until_seen(router: ServerThread, check: Any) -> dict[str, Any]:
    """The router's reading of the engine once `check` holds for it (it polls the engine on its own)."""
    deadline = time.monotonic() + 10
    while not check(reading := large_reading(router)):
        assert time.monotonic() < deadline, reading
        time.sleep(0.05)
    return reading


@pytest.mark.parametrize(
    ("kind", "pages", "model", "fits", "too_big"),
    [
        # 1,024 tokens free of vLLM's 4,096-token KV cache: 2,000 to generate do not fit, 200 do.
        ("vllm", vllm_pages(MODEL, usage=0.75, blocks=256), MODEL, 200, 2000),
        # TGI's batch may grow to 15,000 of its 16,000 tokens: 1,000 free.
        ("tgi", tgi_pages(budget=16000, batch_max_tokens=15000, max_total_tokens=8192), MODEL, 200, 2000),
        # Ollama reports no free memory; its model's context length (2,048) is the window.
        (
            "ollama",
            ollama_pages([{"name": "llama3.1:8b", "size": GIB, "size_vram": GIB, "context_length": 2048}]),
            "llama3.1:8b",
            200,
            3000,
        ),
    ],
)
def test_a_request_that_would_not_fit_the_engine_goes_to_the_next_tier_unsent(
    start_router: RouterFactory,
    standins: dict[str, ServerThread],
    kind: str,
    pages: dict[str, Any],
    model: str,
    fits: int,
    too_big: int,
) -> None:
    served = engine("large", pages)
    with ServerThread(served) as server:
        router = engine_router(start_router, standins, kind, server, model)
        reading = large_reading(router)
        assert reading["telemetry"] == kind and reading["source"] == "poll" and reading["fresh"], reading
        assert reading["note"].startswith({"vllm": "vLLM", "tgi": "TGI", "ollama": "Ollama"}[kind]), reading

        assert ask(router, too_big).startswith("[remote]")
        assert not served.chat.received, "skipped before anything was sent to it"
        assert ask(router, fits).startswith("[large]")
        assert len(served.chat.received) == 1


def test_the_reading_follows_the_engine(start_router: RouterFactory, standins: dict[str, ServerThread]) -> None:
    """The same request goes to vLLM while its cache has room and past it once the cache fills (polled, not
    read once), and a full cache is not mistaken for an unreachable server. vLLM runs with --api-key here: its
    /v1/models is read with the tier's key."""
    served: EngineStandin = engine("large", vllm_pages(MODEL, usage=0.0, blocks=256))
    served.api_key = ENGINE_KEY
    with ServerThread(served) as server:
        router = engine_router(start_router, standins, "vllm", server)
        assert ask(router, 1000).startswith("[large]")
        served.pages.update(vllm_pages(MODEL, usage=0.9, blocks=256, waiting=7))
        assert wait_until_seen(router, lambda r: "90.0% used" in (r["note"] or ""))["queue_depth"] == 7
        assert ask(router, 1000).startswith("[remote]")
        assert len(served.chat.received) == 1


# An engine that has served a while: 50 ms decode steps, 200-token answers, prompts prefilled at 5,000 tokens/s.
PACE = Served().then(steps=4000, step_s=0.05, finished=40, prompt=500, prefill_s=0.1, answer=200)
LONG_QUEUE = {"vllm": {"running": 8, "waiting": 24}, "tgi": {"batch_size": 8, "queued": 24}}
SHORT_QUEUE = {"vllm": {"running": 3, "waiting": 0}, "tgi": {"batch_size": 3, "queued": 0}}


def queue_pages(kind: str, queue: dict[str, dict[str, int]], served: Served = PACE) -> dict[str, tuple[str, str]]:
    """The engine's pages with room in its KV cache and this queue."""
    if kind == "vllm":
        return vllm_pages(MODEL, usage=0.2, blocks=1024, served=served, **queue[kind])
    return tgi_pages(budget=16000, batch_max_tokens=2000, max_total_tokens=8192, served=served, **queue[kind])


@pytest.mark.parametrize("kind", ["vllm", "tgi"])
def test_a_long_engine_queue_spills_to_the_next_tier_unsent(
    start_router: RouterFactory, standins: dict[str, ServerThread], kind: str
) -> None:
    """With `routing.max_queue_wait_s`, an engine whose metrics show a long queue is skipped before anything is
    sent to it (24 waiting on a full batch of 8: 25 answers of 200 tokens must end, one every 25 steps of 50 ms,
    about 31 s), with `queue_wait` in the response; once its queue is short the same request goes to it. The router
    keeps its adapter between polls: the step it shows is the recent one, not the engine's lifetime mean."""
    served = engine("large", queue_pages(kind, LONG_QUEUE))
    with ServerThread(served) as server:
        router = engine_router(start_router, standins, kind, server, max_queue_wait_s=5.0)
        reading = wait_until_seen(router, lambda r: r["queue_depth"] == 24)
        assert reading["step_seconds"] == pytest.approx(0.05) and reading["queue_wait_s"] > 30, reading

        spilled = post(router, 200)
        assert spilled.json()["choices"][0]["message"]["content"].startswith("[remote]")
        assert spilled.headers["x-router-tier"] == "remote"
        assert spilled.headers["x-router-fallback"] == "large->remote"
        assert spilled.headers["x-router-fallback-reason"] == "preflight:queue_wait"
        assert not served.chat.received, "skipped before anything was sent to it"
        ready = httpx.get(f"{router.url}/ready", headers={"authorization": f"Bearer {ADMIN}"}).json()
        counters = ready["counters"]
        assert counters["refused"] == [{"reason": "queue_wait", "tier": "large", "value": 1}]

        served.pages.update(queue_pages(kind, SHORT_QUEUE, PACE.then(steps=WINDOW, step_s=0.01)))
        reading = wait_until_seen(router, lambda r: r["queue_depth"] == 0)
        assert reading["queue_wait_s"] < 5.0 and reading["step_seconds"] == pytest.approx(0.01), reading
        answered = post(router, 200)
        assert answered.headers["x-router-tier"] == "large" and "x-router-fallback" not in answered.headers
        assert len(served.chat.received) == 1
