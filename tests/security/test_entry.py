"""Issue 17, the door: what a request must show before its body is read, and what a connection may cost.

A real router process (`python -m router.cli serve`, auth on, the shipped rails) in front of stand-ins, spoken to
with raw sockets where a client library would not misbehave the way an attacker does."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.decide.access import hash_key
from tests.helpers import router_yaml, write_config
from tests.servers import ServerThread, cli_process, free_port

KEY = "sk-good-0123456789abcdef"
HI = [{"role": "user", "content": "hi"}]


def config(tmp_path: Path, standins: dict[str, ServerThread], **server: Any) -> Path:
    raw = router_yaml(*(f"{standins[t].url}/v1" for t in ("small", "large", "remote")))
    raw["auth"] = {"enabled": True, "keys": [{"name": "good", "sha256": hash_key(KEY)}], "failed_keys_per_minute": 30}
    raw["server"].update(header_timeout_s=1.0, body_timeout_s=2.0, max_header_bytes=8192, **server)
    raw.pop("workers", None)
    return write_config(tmp_path / "router.yaml", raw)


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, standins: dict[str, ServerThread]) -> Iterator[str]:
    """One router process for the module (its start loads the rails: seconds); the throttling test runs last."""
    port = free_port()
    path = config(tmp_path_factory.mktemp("entry"), standins)
    url = f"http://127.0.0.1:{port}"
    with cli_process(["serve", "--config", str(path), "--port", str(port)], f"{url}/health"):
        yield url


def raw_exchange(url: str, data: bytes, *, wait_s: float = 5.0) -> tuple[bytes, float]:
    """Send `data` on a fresh connection; read until the server closes it or `wait_s` passes."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):  # a server that closes with unread data resets
            pass
    return received, time.monotonic() - started


def post(
    url: str, headers: dict[str, str], body: bytes = b'{"messages": [{"role": "user", "content": "hi"}]}'
) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body


def test_the_key_is_checked_before_the_body_is_read(router: str) -> None:
    """A stranger announcing 4 MB and sending none of it is answered 401 at once, from its headers alone."""
    head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    announced = head + "authorization: Bearer sk-wrong-0000\r\ncontent-length: 4000000\r\n\r\n"
    received, _ = raw_exchange(router, announced.encode(), wait_s=1.5)
    assert received.startswith(b"HTTP/1.1 401"), received[:200]


def test_a_non_json_post_is_refused_before_anything_else(router: str) -> None:
    form = httpx.post(f"{router}/v1/chat/completions", content=b"messages=hi", headers={"content-type": "text/plain"})
    assert form.status_code == 415 and form.json()["error"]["code"] == "unsupported_media_type"
    ok = httpx.post(f"{router}/v1/chat/completions", json={"messages": HI}, headers={"authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200


def test_bearer_parsing_is_strict_and_one_authorization_header_is_allowed(router: str) -> None:
    json = {"content-type": "application/json"}
    for value in (f"Bearer  {KEY}", f"Bearer {KEY},", f"Token {KEY}", f"Bearer\t{KEY}"):
        response = httpx.post(f"{router}/v1/chat/completions", json={"messages": HI}, headers={"authorization": value})
        assert response.status_code == 401, value
    nbsp = post(router, json).replace(b"\r\n\r\n", b"\r\nauthorization: Bearer " + KEY.encode() + b"\xa0\r\n\r\n", 1)
    received, _ = raw_exchange(router, nbsp, wait_s=2)
    assert received.startswith(b"HTTP/1.1 401"), "a trailing no-break space is not trimmed into a valid key"
    twice = post(router, {**json, "authorization": f"Bearer {KEY}"}).replace(
        b"\r\n\r\n", b"\r\nauthorization: Bearer sk-other\r\n\r\n", 1
    )
    received, _ = raw_exchange(router, twice, wait_s=2)
    assert received.startswith(b"HTTP/1.1 400") and b"one Authorization header" in received


def test_slow_headers_and_huge_headers_are_cut_off(router: str) -> None:
    received, seconds = raw_exchange(router, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n", wait_s=5)
    assert received.startswith(b"HTTP/1.1 408") and seconds < 4, (received[:100], seconds)
    huge = b"GET /health HTTP/1.1\r\nhost: x\r\n" + b"x-pad: " + b"a" * 200_000 + b"\r\n\r\n"
    received, _ = raw_exchange(router, huge, wait_s=5)
    assert received.startswith(b"HTTP/1.1 431"), received[:100]
    assert httpx.get(f"{router}/health").status_code == 200


def test_a_body_that_trickles_is_cut_off(router: str) -> None:
    head = post(router, {"content-type": "application/json", "authorization": f"Bearer {KEY}"})
    received, seconds = raw_exchange(router, head[:-5], wait_s=6)  # all but the last 5 bytes, never sent
    assert seconds < 5.5, "the connection was closed by the body deadline"
    assert b"200 OK" not in received


def test_deeply_nested_json_is_a_400(router: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    body = b'{"messages": [{"role": "user", "content": "hi"}], "tools": ' + deep + b"}"
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    response = httpx.post(f"{router}/v1/chat/completions", content=body, headers=headers)
    assert response.status_code == 400 and "nest" in response.json()["error"]["message"]


def test_an_address_that_keeps_failing_keys_is_throttled(router: str) -> None:
    """At most `failed_keys_per_minute` (30) failures a minute from one address (the tests above spent some),
    then even a good key from there waits. The address is the connection's: an X-Forwarded-For header naming
    another each time changes nothing (no proxy is configured as trusted; bench/security_probe.py found uvicorn
    believed it from 127.0.0.1)."""
    body = {"messages": HI}
    statuses = []
    for n in range(31):
        headers = {"authorization": f"Bearer sk-guess-{n}", "x-forwarded-for": f"203.0.113.{n}"}
        bad = httpx.post(f"{router}/v1/chat/completions", json=body, headers=headers)
        statuses.append(bad.status_code)
        if bad.status_code == 429:
            break
    assert set(statuses[:-1]) == {401} and statuses[-1] == 429, statuses
    throttled = httpx.post(f"{router}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"})
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0
