"""Workers accept only the router: a shared token (auth.worker_token_env) on every /v1 call."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis as redis_client
import yaml

from router.core.config import load_config
from tests.helpers import REPO, RouterFactory, router_yaml, wait_until_ready
from tests.servers import ServerThread, free_port
from workers.app import create_worker_app

HI = [{"role": "user", "content": "hi"}]


def test_workers_accept_only_the_router(
    start_router: RouterFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, checkpoint_dir: Path
) -> None:

    monkeypatch.setenv("TEST_WORKER_TOKEN", "shared-secret-token")
    raw = yaml.safe_load((REPO / "config" / "router.yaml").read_text())
    raw["auth"] = {"worker_token_env": "TEST_WORKER_TOKEN"}
    raw["workers"]["small"].update(device="cpu", checkpoint_dir=str(checkpoint_dir))
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(raw))
    with ServerThread(create_worker_app(load_config(path, environ={}), "small")) as worker:
        wait_until_ready(worker)
        direct = httpx.post(f"{worker.url}/v1/chat/completions", json={"messages": HI, "max_tokens": 2})
        assert direct.status_code == 401 and direct.json()["error"]["code"] == "invalid_worker_token"
        assert httpx.get(f"{worker.url}/ready").status_code == 200  # health stays open
        routed_raw = router_yaml(f"{worker.url}/v1", "http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1")
        routed_raw["auth"] = {"worker_token_env": "TEST_WORKER_TOKEN"}
        router = start_router(routed_raw)
        through = httpx.post(
            f"{router.url}/v1/chat/completions", json={"model": "small", "messages": HI, "max_tokens": 2}
        )
        assert through.status_code == 200 and through.headers["x-router-tier"] == "small"


def test_a_discovered_worker_gets_the_token_too(
    start_router: RouterFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, checkpoint_dir: Path, redis_url: str
) -> None:
    """A worker found in Redis at a URL other than the tier's static one is sent the token as well."""
    monkeypatch.setenv("TEST_WORKER_TOKEN", "shared-secret-token")
    redis = {"url": redis_url, "prefix": "token-discovery:"}
    raw = yaml.safe_load((REPO / "config" / "router.yaml").read_text())
    raw["auth"] = {"worker_token_env": "TEST_WORKER_TOKEN"}
    raw["redis"] = redis
    port = free_port()
    raw["workers"]["small"].update(device="cpu", checkpoint_dir=str(checkpoint_dir), port=port)
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(raw))
    app = create_worker_app(load_config(path, environ={}), "small", heartbeat_s=0.2)
    with ServerThread(app, port=port) as worker:
        wait_until_ready(worker)
        key = f"token-discovery:workers:small:127.0.0.1:{port}"
        store = redis_client.Redis.from_url(redis_url)
        deadline = time.monotonic() + 30
        while b'"ready":true' not in (store.get(key) or b""):  # the first heartbeat after loading
            assert time.monotonic() < deadline, "the worker never published a ready heartbeat"
            time.sleep(0.05)
        store.close()
        dead = "http://127.0.0.1:1/v1"  # the static URL of every tier: only discovery can find the worker
        router = start_router(router_yaml(dead, dead, dead, auth=raw["auth"], redis=redis))
        through = httpx.post(
            f"{router.url}/v1/chat/completions", json={"model": "small", "messages": HI, "max_tokens": 2}
        )
        assert through.status_code == 200, through.text
        assert through.headers["x-router-tier"] == "small" and "x-router-fallback" not in through.headers
