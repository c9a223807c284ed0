"""Structured JSON logs: one request id from the client through the router to the worker; prompts kept out."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from router.core.logs import JsonFormatter, RequestIdFilter
from tests.helpers import RouterFactory, WorkerFactory, router_yaml

SECRET = "my zebra password is hunter2"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Capture every log record as the CLI would write it: JSON lines with the request id."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(old_level)


def entries(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_one_request_id_from_router_to_worker_and_no_prompt_in_logs(
    start_worker: WorkerFactory, start_router: RouterFactory, log_lines: io.StringIO
) -> None:
    worker = start_worker("small")
    raw = router_yaml(f"{worker.url}/v1", "http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1")
    router = start_router(raw)
    body = {"model": "small", "messages": [{"role": "user", "content": SECRET}], "max_tokens": 4}
    url = f"{router.url}/v1/chat/completions"
    response = httpx.post(url, json=body, headers={"x-request-id": "req-42.a"}, timeout=60)
    assert response.status_code == 200 and response.headers["x-request-id"] == "req-42.a"
    generated = httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=60)
    assert len(generated.headers["x-request-id"]) == 32  # none given: the router makes one
    headers = {"x-request-id": "bad id; drop table", "content-type": "application/json"}
    bad = httpx.post(f"{router.url}/v1/chat/completions", content=b"{", headers=headers)
    assert bad.status_code == 400 and len(bad.headers["x-request-id"]) == 32  # not a sane token: replaced

    logged = entries(log_lines)
    mine = [e for e in logged if e.get("request_id") == "req-42.a"]
    router_access = [e for e in mine if e["logger"] == "router.access"]
    worker_access = [e for e in mine if e["logger"] == "workers.access"]
    assert len(router_access) == 1 and len(worker_access) == 1, mine
    assert router_access[0]["tier"] == "small" and router_access[0]["status"] == 200
    assert router_access[0]["tokens_out"] >= 1 and "seconds" in router_access[0]
    assert worker_access[0]["completion_tokens"] >= 1
    assert "zebra" not in log_lines.getvalue(), "prompts stay out of the logs by default"


def test_prompts_are_logged_only_when_asked(start_router: RouterFactory, log_lines: io.StringIO) -> None:
    router = start_router(logging={"prompts": True})
    body = {"model": "small", "messages": [{"role": "user", "content": SECRET}]}
    url = f"{router.url}/v1/chat/completions"
    response = httpx.post(url, json=body, headers={"x-request-id": "with-prompt"}, timeout=60)
    assert response.status_code == 200
    access = [e for e in entries(log_lines) if e.get("request_id") == "with-prompt" and e["logger"] == "router.access"]
    assert access and access[0]["prompt"] == SECRET
