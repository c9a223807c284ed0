"""Real servers on loopback for tests: an ASGI app under uvicorn in a thread, and redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import uvicorn

from router.api.serving import uvicorn_config
from router.core.serving import ServerConfig


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerThread:
    """Serve an ASGI app on 127.0.0.1 with uvicorn in a background thread, lifespan included, with the same
    per-connection limits as the CLI (`server`, the defaults unless given)."""

    def __init__(self, app: Any, port: int | None = None, server: ServerConfig | None = None) -> None:
        self.port = port or free_port()
        # A bounded graceful shutdown, as the CLI has: an idle connection the server still counts cannot hold the
        # lifespan's shutdown (and with it a worker's deregistration) past a few seconds.
        config = uvicorn_config(app, "127.0.0.1", self.port, server, log_level="warning", graceful_s=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)


@contextmanager
def redis_server(
    args: Sequence[str] = ("--save", "", "--appendonly", "no"), user: str | None = None, password: str | None = None
) -> Iterator[str]:
    """A private redis-server on a free port, started with `args` (its options); yields its URL (with `user` and
    `password` in it when given)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, username=user, password=password)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        credentials = f"{user or ''}:{password}@" if password else ""
        yield f"redis://{credentials}127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def cli_process(
    args: list[str], ready_url: str, env: dict[str, str] | None = None, ready_s: float = 60.0
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m router.cli <args>` as its own process, once `ready_url` answers 200 (within `ready_s`); killed at
    exit."""
    from router.supervisor import wait_ready

    repo = str(Path(__file__).resolve().parent.parent)
    environ = {**os.environ, "PYTHONPATH": repo, **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", *args], env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        if not wait_ready(ready_url, time.monotonic() + ready_s):
            raise RuntimeError(f"{' '.join(args)} did not become ready at {ready_url}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
