"""VRAM-aware routing end to end: real workers (tiny checkpoints, a simulated GPU), real routers, a remote
stand-in, and a real Redis. Nothing may be lost: every request gets an answer, from the worker or the remote.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml

from router.devtools.standin import Standin, StandinSettings
from tests.helpers import GB, REPO, RouterFactory, WorkerFactory, router_yaml
from tests.servers import ServerThread, cli_process, free_port, redis_server
from workers.memory import SimulatedGpu

LONG = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


@pytest.fixture
def remote() -> Any:
    with ServerThread(Standin(StandinSettings(name="remote", max_words=400))) as server:
        yield server


def routed_config(small_url: str, remote_url: str, **routing: Any) -> dict[str, Any]:
    raw = router_yaml(small_url, "http://127.0.0.1:1/v1", remote_url)
    raw["tiers"]["small"]["fallback"] = ["remote"]
    raw["tiers"]["remote"]["guardrails"] = False
    raw["tiers"]["large"]["guardrails"] = False
    raw["routing"] = {**raw.get("routing", {}), **routing}
    raw["discovery"] = {"interval_s": 0.1, "stale_after_s": 1.0}
    return raw


def memory(worker: ServerThread) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{worker.url}/v1/memory").json()
    return state


def report(router: ServerThread) -> dict[str, Any]:
    ready: dict[str, Any] = httpx.get(f"{router.url}/ready").json()
    return ready


def small_gpu_worker(start_worker: WorkerFactory) -> tuple[ServerThread, SimulatedGpu]:
    gpu = SimulatedGpu(8 * GB)
    worker = start_worker(
        "small", probe=gpu, max_batch_size=4, max_seq_len=256, max_tokens_cap=200, vram={"safety_margin_bytes": 0}
    )
    return worker, gpu


def test_pressure_the_excess_goes_to_remote_and_nothing_fails(
    start_worker: WorkerFactory, start_router: RouterFactory, remote: ServerThread
) -> None:
    worker, _ = small_gpu_worker(start_worker)
    per_token = memory(worker)["kv_bytes_per_token"]
    assert memory(worker)["budget"] == 4 * 256 * per_token  # room for 4 requests of 200 new tokens at once
    router = start_router(routed_config(f"{worker.url}/v1", f"{remote.url}/v1"))
    time.sleep(0.3)  # a first telemetry reading

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, str, str]:
        body = {"model": "small", "messages": LONG, "max_tokens": 200, "ignore_eos": True, "stream": i % 2 == 0}
        url = f"{router.url}/v1/chat/completions"
        if body["stream"]:
            async with client.stream("POST", url, json=body) as response:
                lines = [line async for line in response.aiter_lines() if line]
                ok = lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)
        else:
            response = await client.post(url, json=body)
            ok = response.status_code == 200 and response.json()["choices"][0]["finish_reason"] in ("length", "stop")
        headers = response.headers
        return (
            response.status_code if ok else -1,
            headers.get("x-router-tier", ""),
            headers.get("x-router-fallback-reason", ""),
        )

    async def burst() -> list[tuple[int, str, str]]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(24)))

    results = asyncio.run(burst())
    statuses = [status for status, _, _ in results]
    assert statuses == [200] * 24, results  # 100% answered, zero 5xx, no stream cut
    local = sum(1 for _, tier, _ in results if tier == "small")
    remote_served = sum(1 for _, tier, _ in results if tier == "remote")
    assert local >= 4 and remote_served >= 1 and local + remote_served == 24, results
    reasons = {reason for _, tier, reason in results if tier == "remote"}
    assert reasons <= {"preflight:vram_exhausted", "vram_exhausted", "preflight:queue_full", "queue_full"}, reasons
    counters = report(router)["counters"]
    assert sum(c["value"] for c in counters["refused"]) >= 1, "the pre-flight check turned requests away"

    deadline = time.monotonic() + 10
    while memory(worker)["reserved"] and time.monotonic() < deadline:
        time.sleep(0.05)
    state = memory(worker)
    assert state["reserved"] == 0 and state["in_flight"] == 0, state  # the ledger is back to zero


def test_preflight_skips_the_worker_and_without_it_the_worker_refusal_is_the_reason(
    start_worker: WorkerFactory, start_router: RouterFactory, remote: ServerThread
) -> None:
    worker, gpu = small_gpu_worker(start_worker)
    per_token = memory(worker)["kv_bytes_per_token"]
    gpu.external_bytes = gpu.free_bytes() - 100 * per_token  # another process takes almost all of the device
    body = {"model": "small", "messages": LONG, "max_tokens": 150}

    checked = start_router(routed_config(f"{worker.url}/v1", f"{remote.url}/v1"))
    time.sleep(0.3)
    response = httpx.post(f"{checked.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert response.headers["x-router-fallback"] == "small->remote"
    assert response.headers["x-router-fallback-reason"] == "preflight:vram_exhausted"
    counters = report(checked)["counters"]
    assert counters["refused"] == [{"reason": "vram_exhausted", "tier": "small", "value": 1}]
    assert "upstream_failures" not in counters, "the worker was not tried"

    unchecked = start_router(routed_config(f"{worker.url}/v1", f"{remote.url}/v1", preflight=False))
    response = httpx.post(f"{unchecked.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert response.headers["x-router-fallback-reason"] == "vram_exhausted"  # the worker's own 503 code

    gpu.external_bytes = 0
    time.sleep(0.3)
    fits = httpx.post(f"{checked.url}/v1/chat/completions", json=body, timeout=60)
    assert fits.status_code == 200 and fits.headers["x-router-tier"] == "small"
    assert "x-router-fallback" not in fits.headers


def test_a_worker_killed_mid_stream_is_continued_remotely(
    checkpoint_dir: Path, tmp_path: Path, start_router: RouterFactory, remote: ServerThread
) -> None:
    port = free_port()
    raw = yaml.safe_load((REPO / "config" / "router.yaml").read_text())
    raw["workers"]["small"].update(checkpoint_dir=str(checkpoint_dir), device="cpu", port=port, max_tokens_cap=900)
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(raw))
    with cli_process(["worker", "--tier", "small", "--config", str(path)], f"http://127.0.0.1:{port}/ready") as proc:
        router = start_router(routed_config(f"http://127.0.0.1:{port}/v1", f"{remote.url}/v1"))
        body = {"model": "small", "messages": LONG, "max_tokens": 900, "ignore_eos": True, "stream": True}
        lines: list[str] = []
        with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line:
                    continue
                lines.append(line)
                if len(lines) == 6:
                    proc.send_signal(signal.SIGKILL)  # the worker dies with the stream half done
        assert lines[-1] == "data: [DONE]"
        comment = next(i for i, line in enumerate(lines) if line.startswith(":"))
        assert lines[comment] == ": x-router-fallback small->remote (connection_lost), mid-stream"
        events = [msgspec.json.decode(line[6:]) for line in lines if line.startswith("data: {")]
        assert events[-1]["choices"][0]["finish_reason"] == "stop"
        before = "".join(
            e["choices"][0]["delta"].get("content") or "" for e in (msgspec.json.decode(x[6:]) for x in lines[:comment])
        )
        continuation = httpx.get(f"{remote.url}/_standin/requests").json()[-1]["body"]
        assert continuation["messages"][-1] == {"role": "assistant", "content": before}
        assert len(before) > 0


def test_routing_goes_on_from_static_config_when_redis_stops(
    start_worker: WorkerFactory, start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    with redis_server() as url:
        # The discovered worker: registered in Redis only. The static base_url is the `small` stand-in. The tiny
        # random-weight model: requests must finish within the test's half-second windows on a 2-core CPU.
        redis = {"url": url, "prefix": "discovery:"}
        worker = start_worker("small", model="demo:small", redis=redis, heartbeat_s=0.2, port=free_port())
        raw = routed_config(f"{standins['small'].url}/v1", f"{standins['remote'].url}/v1")
        raw["redis"] = {"url": url, "prefix": "discovery:"}
        router = start_router(raw)
        deadline = time.monotonic() + 10
        while report(router)["workers"]["small"][0]["source"] != "redis":
            assert time.monotonic() < deadline, report(router)["workers"]
            time.sleep(0.05)
        assert report(router)["workers"]["small"][0]["url"] == f"{worker.url}/v1"

        stop = threading.Event()
        served: list[tuple[int, str]] = []

        def load() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    body = {"model": "small", "messages": LONG, "max_tokens": 8}
                    response = client.post(f"{router.url}/v1/chat/completions", json=body)
                    text = response.json()["choices"][0]["message"]["content"] if response.status_code == 200 else ""
                    served.append((response.status_code, "standin" if text.startswith("[small]") else "worker"))

        driver = threading.Thread(target=load)
        driver.start()
        time.sleep(0.5)
        served_while_up = len(served)
    # Redis is gone (the context manager stopped it) while requests keep coming.
    time.sleep(1.5)
    stop.set()
    driver.join(timeout=30)
    assert served and all(status == 200 for status, _ in served), served
    assert any(source == "worker" for _, source in served[:served_while_up]), "discovered while redis was up"
    assert served[-1][1] == "standin", "after redis stopped, the static base_url serves"
    assert report(router)["state"]["ready"] is False


def test_a_stream_broken_off_is_continued_exactly_by_a_worker(
    start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    """small (a stand-in that breaks off) -> large (a real worker): the worker continues the partial answer."""
    worker = start_worker("small")  # serves the `large` tier of this router
    with ServerThread(Standin(StandinSettings(name="small", script=deque(["die:3"])))) as broken:
        raw = router_yaml(f"{broken.url}/v1", f"{worker.url}/v1", "http://127.0.0.1:1/v1")
        raw["tiers"]["small"]["fallback"] = ["large"]
        raw["tiers"]["large"]["guardrails"] = False
        router = start_router(raw)
        body = {"model": "small", "messages": LONG, "max_tokens": 12, "stream": True, "temperature": 0}
        with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body, timeout=60) as response:
            lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert ": x-router-fallback small->large (connection_lost), mid-stream" in lines
    events = [msgspec.json.decode(line[6:]) for line in lines if line.startswith("data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    assert text.startswith("[small] Write a")  # the three words sent before the break, then the worker's
    assert len(text) > len("[small] Write a")
