"""`tiered-router up`: with auth on and the worker token and admin key left unset, it makes both for the processes
it starts, says how to get in, and the stack it started takes the key and the admin key (real processes)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from router.decide.access import hash_key
from tests.helpers import REPO, router_yaml, write_config
from tests.servers import ServerThread, free_port

KEY = "sk-supervised-0123456789abcdef"


def test_up_makes_the_missing_secrets_and_the_stack_takes_the_key(
    standins: dict[str, ServerThread], tmp_path: Path
) -> None:
    small, large, port = free_port(), free_port(), free_port()
    raw = router_yaml(f"http://127.0.0.1:{small}/v1", f"http://127.0.0.1:{large}/v1", f"{standins['remote'].url}/v1")
    raw["workers"] = {}  # local tiers without a model: `up` serves them with stand-ins
    raw["server"].update(port=port, admin_key_env="TR_TEST_ADMIN_KEY")
    for tier in raw["tiers"].values():
        tier["guardrails"] = False
    raw["auth"] = {
        "enabled": True,
        "worker_token_env": "TR_TEST_WORKER_TOKEN",
        "keys": [{"name": "operator", "sha256": hash_key(KEY), "force_tiers": True}],
    }
    config = write_config(tmp_path / "router.yaml", raw)
    env = {k: v for k, v in os.environ.items() if k not in {"TR_TEST_ADMIN_KEY", "TR_TEST_WORKER_TOKEN"}}
    env["TEST_REMOTE_KEY"] = "sk-test"
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "up", "--config", str(config), "--start-timeout", "60"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()
    printed: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while not any("authorization: Bearer $KEY" in line for line in printed):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(printed)
            try:
                printed.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        text = "".join(printed)
        assert "TR_TEST_WORKER_TOKEN is not set: made a worker token" in text
        assert "auth is on" in text and "auth.keys" in text  # no Redis here: keys come from the YAML
        admin = re.search(r"admin key \(/metrics, /status\) is (\S+)", text)
        assert admin, text
        url = f"http://127.0.0.1:{port}"
        body = {"model": "small", "messages": [{"role": "user", "content": "hello there"}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 401
        answered = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"})
        assert answered.status_code == 200 and answered.headers["x-router-tier"] == "small", answered.text
        assert httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {KEY}"}).status_code in {401, 403}
        metrics = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {admin.group(1)}"})
        assert metrics.status_code == 200 and "tiered_router" in metrics.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
