"""Telemetry adapters (router.dispatch.telemetry): vLLM-, TGI- and Ollama-shaped stand-ins on loopback, read into
pre-flight's terms; a request that would not fit a tier's free KV cache (or window) goes to the next tier before
anything is sent to it, and `/ready` says how each reading was derived."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from router.core.config import ConfigError, TelemetrySource, TierConfig, load_config
from router.dispatch.fleet import Telemetry
from router.dispatch.telemetry import adapter_for, prometheus
from tests.engines import EngineStandin, engine, ollama_pages, tgi_pages, vllm_pages
from tests.helpers import REPO, RouterFactory, router_yaml, write_config
from tests.servers import ServerThread

MODEL = "Qwen/Qwen2.5-7B-Instruct"
ADMIN = "telemetry-admin"
ENGINE_KEY = "sk-engine-key"
GIB = 1024**3


def read(kind: TelemetrySource, server: ServerThread, model: str = MODEL) -> dict[str, Any]:
    adapter = adapter_for(TierConfig(base_url=f"{server.url}/v1", model=model, kind="remote", telemetry=kind))
    assert adapter is not None

    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            return await adapter.read(client, {}, 5.0)

    return asyncio.run(go())


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
    start_router: RouterFactory, standins: dict[str, ServerThread], kind: str, server: ServerThread, model: str = MODEL
) -> ServerThread:
    """A router whose `large` tier is the engine (an OpenAI-compatible `kind: remote` tier read by its adapter),
    falling back to the remote stand-in."""
    raw = router_yaml(f"{standins['small'].url}/v1", f"{server.url}/v1", f"{standins['remote'].url}/v1")
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


def ask(router: ServerThread, max_tokens: int) -> str:
    body = {
        "model": "large",
        "messages": [{"role": "user", "content": "Summarise the plot."}],
        "max_tokens": max_tokens,
    }
    response = httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


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
        deadline = time.monotonic() + 10
        while "90.0% used" not in (large_reading(router)["note"] or ""):
            assert time.monotonic() < deadline, large_reading(router)
            time.sleep(0.05)
        assert large_reading(router)["queue_depth"] == 7
        assert ask(router, 1000).startswith("[remote]")
        assert len(served.chat.received) == 1
