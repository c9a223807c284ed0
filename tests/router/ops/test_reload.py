"""Hot reload of rules and thresholds: on file change and on SIGHUP, in flight untouched, bad files rejected."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from router.api.app import create_app
from router.core.config import load_config
from router.devtools.standin import Standin, StandinSettings
from tests.helpers import router_yaml, write_config
from tests.servers import ServerThread, cli_process, free_port

HI = [{"role": "user", "content": "hi"}]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def route(router: str) -> str:
    tier: str = httpx.post(f"{router}/v1/route", json={"messages": HI}).json()["tier"]
    return tier


def config_state(router: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{router}/ready").json()["config"]
    return state


def unguarded(raw: dict[str, Any]) -> dict[str, Any]:
    for tier in raw["tiers"].values():
        tier["guardrails"] = False
    raw["reload"] = {"watch": True, "poll_s": 0.1}
    return raw


def test_rules_reload_when_the_file_changes_without_dropping_a_stream_in_flight(tmp_path: Path) -> None:
    release = threading.Event()
    held = ServerThread(Standin(StandinSettings(name="small", hold_after_first=release)))
    other = ServerThread(Standin(StandinSettings(name="other")))
    with held, other:
        raw = unguarded(router_yaml(f"{held.url}/v1", f"{other.url}/v1", f"{other.url}/v1"))
        path = write_config(tmp_path / "router.yaml", raw)
        with ServerThread(create_app(load_config(path, environ={}), environ={"TEST_REMOTE_KEY": "k"})) as router:
            assert route(router.url) == "small"
            lines: list[str] = []

            def stream() -> None:
                body = {"model": "small", "messages": HI, "stream": True}
                with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body, timeout=30) as response:
                    lines.extend(line for line in response.iter_lines() if line)

            in_flight = threading.Thread(target=stream)
            in_flight.start()
            time.sleep(0.3)  # the stream has started and is held after its first word

            raw["rules"].insert(0, {"name": "hi-remote", "when": {"last_user_regex": "^hi$"}, "tier": "remote"})
            write_config(path, raw)
            wait_for(lambda: config_state(router.url)["version"] == 2)
            assert route(router.url) == "remote"  # new requests follow the new rules

            release.set()
            in_flight.join(timeout=30)
            assert lines[-1] == "data: [DONE]" and any('"finish_reason":"stop"' in line for line in lines)


def test_an_invalid_new_config_is_rejected_and_the_old_one_stays(
    tmp_path: Path, standins: dict[str, ServerThread]
) -> None:
    raw = unguarded(router_yaml(*(f"{standins[t].url}/v1" for t in ("small", "large", "remote"))))
    path = write_config(tmp_path / "router.yaml", raw)
    with ServerThread(create_app(load_config(path, environ={}), environ={"TEST_REMOTE_KEY": "k"})) as router:
        broken = yaml.safe_load(path.read_text())
        broken["rules"].insert(0, {"name": "nowhere", "when": {"last_user_regex": "x"}, "tier": "medium"})
        write_config(path, broken)
        wait_for(lambda: config_state(router.url)["rejected"] == 1)
        state = config_state(router.url)
        assert "rules[0].tier: unknown tier 'medium'" in state["last_error"] and state["version"] == 1
        assert route(router.url) == "small"

        moved = yaml.safe_load(path.read_text())
        moved["rules"].pop(0)
        moved["tiers"]["small"]["base_url"] = "http://127.0.0.1:1/v1"
        write_config(path, moved)
        wait_for(lambda: config_state(router.url)["rejected"] == 2)
        assert "tiers: changed; restart the router" in config_state(router.url)["last_error"]

        threshold = yaml.safe_load(path.read_text())
        threshold["tiers"]["small"]["base_url"] = raw["tiers"]["small"]["base_url"]
        # Scores below the threshold are "simple": at 0 every prompt is "complex" (the default static classifier is
        # confident enough to score "hi" under 0.01).
        threshold["classifier"]["threshold"] = 0.0
        write_config(path, threshold)
        wait_for(lambda: config_state(router.url)["version"] == 2)
        assert config_state(router.url)["threshold"] == 0.0 and config_state(router.url)["last_error"] is None
        assert route(router.url) == "large"


def test_sighup_reloads_a_running_router(tmp_path: Path, standins: dict[str, ServerThread]) -> None:
    raw = unguarded(router_yaml(*(f"{standins[t].url}/v1" for t in ("small", "large", "remote"))))
    raw["reload"] = {"watch": False}
    path = write_config(tmp_path / "router.yaml", raw)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["serve", "--config", str(path), "--port", str(port)]
    with cli_process(args, f"{url}/health", {"TEST_REMOTE_KEY": "k"}) as proc:
        assert route(url) == "small"
        raw["rules"].insert(0, {"name": "hi-large", "when": {"last_user_regex": "^hi$"}, "tier": "large"})
        write_config(path, raw)
        time.sleep(0.3)
        assert route(url) == "small", "watching is off: nothing changes until SIGHUP"
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: config_state(url)["version"] == 2)
        assert route(url) == "large"
