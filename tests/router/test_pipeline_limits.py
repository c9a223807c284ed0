"""Per-key limits kept in Redis hold across router replicas; Redis going away and coming back."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from router.decide.access import hash_key
from tests.helpers import router_yaml, write_config
from tests.servers import ServerThread, cli_process, free_port

KEY = "sk-shared-0123456789"
HI = [{"role": "user", "content": "hi"}]


@contextmanager
def redis_on(port: int) -> Iterator[subprocess.Popen[bytes]]:
    binary = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis did not start"
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def router_process(config: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with cli_process(
        ["serve", "--config", str(config), "--port", str(port)], f"{url}/health", {"TEST_REMOTE_KEY": "k"}
    ):
        yield url


def config(tmp_path: Path, standins: dict[str, ServerThread], redis_port: int, **key: Any) -> Path:
    raw = router_yaml(*(f"{standins[t].url}/v1" for t in ("small", "large", "remote")))
    for tier in raw["tiers"].values():
        tier["guardrails"] = False
    raw["redis"] = {"url": f"redis://127.0.0.1:{redis_port}/0", "prefix": "limits-test:"}
    raw["auth"] = {"enabled": True, "keys": [{"name": "shared", "sha256": hash_key(KEY), "force_tiers": True, **key}]}
    return write_config(tmp_path / "router.yaml", raw)


def post(router: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {KEY}"}
    return httpx.post(f"{router}/v1/chat/completions", json={"model": "small", "messages": HI}, headers=headers)


def not_near_a_minute_boundary() -> None:
    """The limits count per wall-clock minute: start well inside one so the test sees one window."""
    left = 60 - time.time() % 60
    if left < 15:
        time.sleep(left + 0.5)


def test_a_limit_holds_across_two_router_replicas(tmp_path: Path, standins: dict[str, ServerThread]) -> None:
    port = free_port()
    path = config(tmp_path, standins, port, rpm=4)
    with redis_on(port), router_process(path) as a, router_process(path) as b:
        not_near_a_minute_boundary()
        assert [post(url).status_code for url in (a, b, a, b)] == [200] * 4
        over_a, over_b = post(a), post(b)
        for response in (over_a, over_b):
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(response.headers["retry-after"]) <= 60


def test_redis_down_then_back(tmp_path: Path, standins: dict[str, ServerThread]) -> None:
    port = free_port()
    path = config(tmp_path, standins, port, rpm=1000)
    with redis_on(port) as redis_proc, router_process(path) as router:
        assert post(router).status_code == 200
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        down = post(router)  # limits cannot be checked: a clear 503, not a 500 and not a hang
        assert down.status_code == 503 and down.json()["error"]["code"] == "rate_limiter_unavailable"
        with redis_on(port):
            deadline = time.monotonic() + 15
            while post(router).status_code != 200:
                assert time.monotonic() < deadline, "the router did not recover when redis came back"
                time.sleep(0.2)
