"""Issue 17 point 3, connections as a resource: each tier has a pool of its own (a full one moves the request on
within the fallback deadline, and cannot starve another tier), a key holds at most `auth.max_streams_per_key`
open streams, and a request that two tiers answered 500 is not sent on to a third.

Real routers and stand-ins on loopback; what reached each stand-in is read from its request log.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from router.decide.access import hash_key
from router.devtools.standin import Standin, StandinSettings
from tests.helpers import RouterFactory, router_yaml, serve_standins
from tests.servers import ServerThread

QUESTION = [{"role": "user", "content": "one two three four five six seven eight nine ten"}]
KEY = "sk-streams-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}


def received(server: ServerThread) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = httpx.get(f"{server.url}/_standin/requests").json()
    return records


@pytest.fixture
def upstreams() -> Iterator[dict[str, ServerThread]]:
    with serve_standins() as servers:
        yield servers


@pytest.fixture
def held() -> Iterator[tuple[ServerThread, threading.Event]]:
    """A small stand-in whose streams stop after their first word until the event is set."""
    gate = threading.Event()
    server = ServerThread(Standin(StandinSettings(name="small", hold_after_first=gate)))
    with server:
        yield server, gate
        gate.set()


def unguarded(raw: dict[str, Any]) -> dict[str, Any]:
    for tier in raw["tiers"].values():
        tier["guardrails"] = False
        tier["retry"] = {"attempts": 0}
    return raw


def test_a_payload_two_tiers_answer_500_to_goes_no_further(
    start_router: RouterFactory, upstreams: dict[str, ServerThread]
) -> None:
    raw = unguarded(router_yaml(*(f"{upstreams[t].url}/v1" for t in ("small", "large", "remote"))))
    router = start_router(raw)
    for tier in ("small", "large"):
        upstreams[tier].server.config.app.settings.script.append("500")
    response = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "small", "messages": QUESTION})
    assert response.status_code >= 500 and response.status_code != 500, response.text
    assert "error" in response.json()
    assert len(received(upstreams["small"])) == 1 and len(received(upstreams["large"])) == 1
    assert received(upstreams["remote"]) == [], "a third tier never saw the request that crashed two"


def test_one_500_still_falls_back(start_router: RouterFactory, upstreams: dict[str, ServerThread]) -> None:
    """The cut-off is two tiers, not one: a single tier's 500 is its own fault and the next tier answers."""
    router = start_router(unguarded(router_yaml(*(f"{upstreams[t].url}/v1" for t in ("small", "large", "remote")))))
    upstreams["small"].server.config.app.settings.script.append("500")
    response = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "small", "messages": QUESTION})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith("[large]")


def test_a_full_pool_moves_on_and_leaves_other_tiers_theirs(
    start_router: RouterFactory, upstreams: dict[str, ServerThread], held: tuple[ServerThread, threading.Event]
) -> None:
    small, gate = held
    raw = unguarded(router_yaml(f"{small.url}/v1", *(f"{upstreams[t].url}/v1" for t in ("large", "remote"))))
    raw["tiers"]["small"].update(max_connections=1, timeouts={"pool": 0.2})
    router = start_router(raw)
    with httpx.Client(timeout=30) as client:
        body = {"model": "small", "messages": QUESTION, "stream": True}
        with client.stream("POST", f"{router.url}/v1/chat/completions", json=body) as holding:
            assert holding.status_code == 200
            lines = holding.iter_lines()  # kept: a dropped generator closes the client's connection
            assert next(lines).startswith("data:"), "the stream holds small's only connection"
            # small's pool is full: the next request waits pool=0.2 s for it, then goes on to large.
            moved = client.post(f"{router.url}/v1/chat/completions", json={"model": "small", "messages": QUESTION})
            assert moved.status_code == 200, moved.text
            assert moved.json()["choices"][0]["message"]["content"].startswith("[large]")
            assert moved.headers["x-router-tier"] == "large"
            # large has a pool of its own: many requests there while small's connection is held.
            for _ in range(5):
                direct = client.post(f"{router.url}/v1/chat/completions", json={"model": "large", "messages": QUESTION})
                assert direct.status_code == 200
            gate.set()
            assert any("[DONE]" in line for line in lines)
    assert len(received(small)) == 1, "the second request never got a connection to small"


def test_a_key_holds_at_most_its_open_streams(
    start_router: RouterFactory, held: tuple[ServerThread, threading.Event], standins: dict[str, ServerThread]
) -> None:
    small, gate = held
    raw = unguarded(router_yaml(f"{small.url}/v1", *(f"{standins[t].url}/v1" for t in ("large", "remote"))))
    raw["auth"] = {
        "enabled": True,
        "max_streams_per_key": 1,
        "keys": [{"name": "streamer", "sha256": hash_key(KEY), "force_tiers": True}],
    }
    router = start_router(raw)
    body = {"model": "small", "messages": QUESTION, "stream": True}
    with httpx.Client(timeout=30, headers=AUTH) as client:
        with client.stream("POST", f"{router.url}/v1/chat/completions", json=body) as holding:
            assert holding.status_code == 200
            lines = holding.iter_lines()
            next(lines)
            refused = client.post(f"{router.url}/v1/chat/completions", json=body)
            assert refused.status_code == 429, refused.text
            assert "open streams" in refused.json()["error"]["message"]
            assert refused.headers["retry-after"]
            plain = client.post(f"{router.url}/v1/chat/completions", json={**body, "stream": False, "model": "large"})
            assert plain.status_code == 200, "only streams count toward the cap"
            gate.set()
            list(lines)
        again = client.post(f"{router.url}/v1/chat/completions", json={**body, "model": "large"})
        assert again.status_code == 200, "an ended stream gave its place back"
