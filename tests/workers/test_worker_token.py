"""Workers accept only the router: a shared token (auth.worker_token_env) on every /v1 call."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from router.config import load_config
from tests.conftest import REPO, RouterFactory, router_yaml
from tests.servers import ServerThread
from tests.workers.conftest import wait_until_ready
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
