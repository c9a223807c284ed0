"""Faults, one test each: a client leaving mid-stream, the remote API down, a worker restarting."""

from __future__ import annotations

import signal
import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers import REPO, RouterFactory, WorkerFactory, router_yaml
from tests.servers import ServerThread, cli_process, free_port

LONG = [{"role": "user", "content": "Write a very long story."}]


def memory(worker: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{worker}/v1/memory").json()
    return state


def test_a_client_leaving_mid_stream_cancels_generation_and_frees_its_memory(
    start_worker: WorkerFactory, start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    def paced(phase: str, ids: list[str]) -> None:
        if phase == "decode":
            time.sleep(0.005)  # a tiny model decodes faster than the test reads: pace it like a real one

    worker = start_worker("small", max_seq_len=4096, max_tokens_cap=3000, fault_hook=paced)
    router = start_router(
        router_yaml(f"{worker.url}/v1", f"{standins['large'].url}/v1", f"{standins['remote'].url}/v1")
    )
    body = {"model": "small", "messages": LONG, "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers["x-router-tier"] == "small", response.headers
        for i, _ in enumerate(response.iter_lines()):
            if i == 5:
                assert memory(worker.url)["reserved"] > 0  # generating, its KV cache reserved
            if i == 10:
                break  # the client goes away with ~3,000 tokens (~15 s at this pace) still to come
    left_at = time.monotonic()
    while memory(worker.url)["reserved"] or memory(worker.url)["running"]:
        assert time.monotonic() - left_at < 5, memory(worker.url)
        time.sleep(0.05)
    state = memory(worker.url)
    assert state["reserved"] == 0 and state["in_flight"] == 0 and state["running"] == 0


def test_the_remote_api_down_is_a_clear_503_naming_it(
    start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    router = start_router(router_yaml(f"{standins['small'].url}/v1", dead, dead))
    started = time.monotonic()
    response = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "remote", "messages": LONG}, timeout=30)
    assert response.status_code == 503 and time.monotonic() - started < 5
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable" and "tier 'remote'" in error["message"]
    # The large tier falls back to the remote; both down: still one clear error, naming the first failure.
    both = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "large", "messages": LONG}, timeout=30)
    assert both.status_code == 503 and "tier 'large'" in both.json()["error"]["message"]
    answered = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "small", "messages": LONG}, timeout=60)
    assert answered.status_code == 200


def worker_process(config: Path, port: int) -> AbstractContextManager[subprocess.Popen[bytes]]:
    args = ["worker", "--tier", "small", "--config", str(config), "--port", str(port)]
    return cli_process(args, f"http://127.0.0.1:{port}/ready")


def test_a_worker_restart_is_bridged_by_fallback(
    checkpoint_dir: Path, tmp_path: Path, start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    port = free_port()
    raw = yaml.safe_load((REPO / "config" / "router.yaml").read_text())
    raw["workers"]["small"].update(checkpoint_dir=str(checkpoint_dir), device="cpu")
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump(raw))
    routed = router_yaml(f"http://127.0.0.1:{port}/v1", f"{standins['large'].url}/v1", f"{standins['remote'].url}/v1")
    routed["discovery"] = {"interval_s": 0.1, "stale_after_s": 0.5}
    router = start_router(routed)
    body = {"model": "small", "messages": LONG, "max_tokens": 4}

    def ask() -> httpx.Response:
        return httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=30)

    with worker_process(config, port) as proc:
        assert ask().headers["x-router-tier"] == "small"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        during = ask()  # the worker is gone: the chain carries the request
        assert during.status_code == 200 and during.headers["x-router-fallback"] == "small->large"
    with worker_process(config, port):
        deadline = time.monotonic() + 10
        while "x-router-fallback" in (after := ask()).headers:
            assert time.monotonic() < deadline, "the restarted worker was not used again"
            time.sleep(0.1)
        assert after.status_code == 200 and after.headers["x-router-tier"] == "small"
