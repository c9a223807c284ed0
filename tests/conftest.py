"""Shared fixtures: stand-in upstreams, a private Redis, and routers built from YAML on loopback (helpers they
use, and tests import, live in tests.helpers)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.api.app import create_app
from router.core.config import Config, load_config
from router.guard.rails import Guard
from tests.helpers import REPO, RouterFactory, raw_guard_path, router_yaml, serve_standins, write_config
from tests.servers import ServerThread, free_port, redis_server

os.environ["NEMO_GUARDRAILS_NO_USAGE_STATS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def standins() -> Iterator[dict[str, ServerThread]]:
    """Stand-ins shared by the session (tests that script failures start their own: `serve_standins`)."""
    with serve_standins() as servers:
        yield servers


@pytest.fixture(scope="session")
def shipped_guard() -> Guard:
    """The shipped guardrails (config/guardrails), loaded once: routers built from the shipped YAML share it."""
    raw = router_yaml("http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1")
    config = load_config(write_config(Path(tempfile.mkdtemp()) / "router.yaml", raw), environ={})
    return Guard.load(config)


@pytest.fixture
def start_router(tmp_path: Path, standins: dict[str, ServerThread], shipped_guard: Guard) -> Iterator[RouterFactory]:
    """Start a real router (uvicorn on loopback) from YAML; keyword args override top-level config keys."""
    started: list[ServerThread] = []

    def start(
        raw: dict[str, Any] | None = None, environ: dict[str, str] | None = None, **overrides: Any
    ) -> ServerThread:
        if raw is None:
            raw = router_yaml(*(f"{standins[t].url}/v1" for t in ("small", "large", "remote")), **overrides)
        config = load_config(write_config(tmp_path / f"router{len(started)}.yaml", raw), environ={})
        env = {"TEST_REMOTE_KEY": "sk-test-secret-key"} if environ is None else environ
        guard = shipped_guard if config.guardrails.path == raw_guard_path() else None
        server = ServerThread(create_app(config, environ=env, guard=guard))
        server.__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def shipped_config() -> Config:
    return load_config(REPO / "config" / "router.yaml", environ={})


@pytest.fixture
def unused_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"
