"""Helpers the tests and fixtures share: the repository root, router configs from the shipped YAML, stand-ins,
and waiting for a worker."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from router.devtools.standin import Standin, StandinSettings
from tests.servers import ServerThread

REPO = Path(__file__).resolve().parent.parent
GB = 1024**3
RouterFactory = Callable[..., ServerThread]
"""The `start_router` fixture: a real router on loopback from YAML."""
WorkerFactory = Callable[..., ServerThread]
"""The `start_worker` fixture: a real worker on loopback from the shipped config."""


def router_yaml(small: str, large: str, remote: str, **overrides: Any) -> dict[str, Any]:
    """The shipped config/router.yaml with the tiers pointed at the given base URLs."""
    raw: dict[str, Any] = yaml.safe_load((REPO / "config" / "router.yaml").read_text())
    raw["server"]["port"] = 0
    for name, url in (("small", small), ("large", large), ("remote", remote)):
        raw["tiers"][name]["base_url"] = url
    raw["tiers"]["remote"]["api_key_env"] = "TEST_REMOTE_KEY"
    for worker_tier in ("small", "large"):  # workers on loopback found through Redis, at ports of their own
        raw["tiers"][worker_tier]["discover_from"] = ["127.0.0.1"]
    raw.setdefault("guardrails", {})["path"] = raw_guard_path()
    for key, value in overrides.items():
        raw[key] = value
    return raw


def raw_guard_path() -> str:
    return str(REPO / "config" / "guardrails")


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    """Written whole, then renamed into place: a running router's reload watcher never reads it half-written (it
    did once in CI: an empty file between the truncate and the write, rejected as 'expected a mapping')."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(yaml.safe_dump(raw, sort_keys=False))
    os.replace(partial, path)
    return path


@contextmanager
def serve_standins() -> Iterator[dict[str, ServerThread]]:
    """One stand-in per tier, named after it, served on loopback."""
    servers = {name: ServerThread(Standin(StandinSettings(name=name))) for name in ("small", "large", "remote")}
    for server in servers.values():
        server.__enter__()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)


def guardrails_with(tmp_path: Path, flows: str = "self check input") -> Path:
    """A copy of the shipped guardrails with one commented-out flow (`self check input`, ...) switched on."""
    directory = tmp_path / "guardrails"
    shutil.copytree(REPO / "config" / "guardrails", directory)
    config = directory / "config.yml"
    config.write_text(config.read_text().replace(f"# - {flows}", f"- {flows}"))
    return directory


def wait_until_ready(server: ServerThread, timeout_s: float = 120.0) -> None:
    """Until the worker's /ready answers 200; a load that failed raises at once with its detail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = httpx.get(f"{server.url}/ready")
        if response.status_code == 200:
            return
        detail = response.json().get("detail", "")
        if "failed" in detail:
            raise RuntimeError(detail)
        time.sleep(0.05)
    raise TimeoutError("worker did not become ready")
