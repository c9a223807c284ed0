"""Worker registration and heartbeats in a real Redis: discovery while alive, expiry when it dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import yaml

from tests.helpers import REPO, WorkerFactory
from tests.servers import free_port


def records(url: str, prefix: str) -> dict[str, dict[str, object]]:
    client = redis.Redis.from_url(url)
    try:
        found = {}
        for key in client.scan_iter(match=f"{prefix}workers:*"):
            value = client.get(key)
            if value is not None:
                found[key.decode()[len(prefix) :]] = json.loads(value)
        return found
    finally:
        client.close()


def wait_for(predicate, timeout_s: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_worker_registers_and_publishes_its_state(start_worker: WorkerFactory, redis_url: str) -> None:
    prefix = "telemetry-a:"
    port = free_port()
    worker = start_worker("small", redis={"url": redis_url, "prefix": prefix}, heartbeat_s=0.2, port=port)
    key = f"workers:small:127.0.0.1:{port}"
    wait_for(lambda: records(redis_url, prefix).get(key, {}).get("ready") is True)
    record = records(redis_url, prefix)[key]
    assert record["url"] == f"http://127.0.0.1:{port}/v1"
    memory = record["memory"]
    assert isinstance(memory, dict) and memory["free"] > 0 and memory["kv_bytes_per_token"] > 0
    assert record["queue_depth"] == 0
    assert memory["max_batch_size"] == 8 and memory["queued_prompt_tokens"] == 0  # what pre-flight's wait needs
    assert memory["step_seconds"] is None and record["step_seconds"] is None  # nothing decoded yet, nothing made up
    ttl = redis.Redis.from_url(redis_url).pttl(prefix + key)
    assert 0 < ttl <= 600, "the record expires unless renewed"
    worker.__exit__(None, None, None)  # a graceful stop deregisters at once
    wait_for(lambda: key not in records(redis_url, prefix), timeout_s=30)


def test_a_killed_worker_expires(redis_url: str, checkpoint_dir: Path, tmp_path: Path) -> None:
    prefix = "telemetry-b:"
    raw = yaml.safe_load((REPO / "config" / "router.yaml").read_text())
    port = free_port()
    raw["redis"] = {"url": redis_url, "prefix": prefix}
    raw["workers"]["small"].update(checkpoint_dir=str(checkpoint_dir), device="cpu", port=port)
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "worker", "--tier", "small", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    key = f"workers:small:127.0.0.1:{port}"
    try:
        wait_for(lambda: records(redis_url, prefix).get(key, {}).get("ready") is True, timeout_s=60)
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert key in records(redis_url, prefix), "a dead worker's record lives until its TTL runs out"
        wait_for(lambda: key not in records(redis_url, prefix), timeout_s=10)
        assert time.monotonic() - killed_at <= 4.5  # three heartbeats of 1 s, plus polling
    finally:
        if proc.poll() is None:
            proc.kill()
