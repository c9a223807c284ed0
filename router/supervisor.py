"""`tiered-router up`: start the whole stack on one machine (router + a process per local tier).

Each tier whose base_url is on this machine gets a process listening on that URL's port; the
router starts once they answer. Ctrl-C (or SIGTERM) stops everything.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx

from router.core.config import Config, load_config

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
_QUESTION = '{{"role": "user", "content": "What is the capital of France?"}}'
_EXAMPLE = (
    "  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\\n"
    f'    -d \'{{{{"model": "auto", "temperature": 0, "messages": [{_QUESTION}]}}}}\'\n'
    "  curl -s {url}/v1/route -H 'content-type: application/json' \\\n"
    '    -d \'{{"messages": [{{"role": "user", "content": "Prove that sqrt(2) is irrational."}}]}}\'\n'
)


def tier_commands(config: Config, config_path: str) -> dict[str, list[str]]:
    """The command that serves each local worker tier: its model worker, or the echo stand-in if it has none."""
    commands = {}
    cli = [sys.executable, "-m", "router.cli"]
    for name, tier in config.tiers.items():
        url = urlsplit(tier.base_url)
        if tier.kind != "worker" or url.hostname not in LOCAL_HOSTS:
            continue
        port = str(url.port or 80)
        if name in config.workers:
            commands[name] = [*cli, "worker", "--tier", name, "--config", config_path, "--port", port]
        else:
            commands[name] = [*cli, "standin", "--port", port, "--name", f"{name}-standin"]
    return commands


def wait_ready(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def access_note(config: Config, config_path: str) -> str:
    """Who can use the stack just started, and an example request that works on it."""
    url = f"http://{config.server.host}:{config.server.port}"
    if not config.auth.enabled:
        where = "this machine only" if config.server.host in LOCAL_HOSTS else "anyone who can reach it"
        return f"auth is off: open to {where} ({config.server.host}).\n\ntry:\n{_EXAMPLE.format(url=url)}"
    example = _EXAMPLE.format(url=url).replace(
        "-H 'content-type: application/json'", "-H 'content-type: application/json' -H \"authorization: Bearer $KEY\""
    )
    if config.redis.url and config.auth.redis_keys:
        make = (
            "Make one (stored in Redis, shown once):\n"
            f"  KEY=$(tiered-router add-key --name me --config {config_path})"
        )
    else:
        make = "Use one listed under auth.keys (their SHA-256: `tiered-router hash-key`) as $KEY."
    return f"auth is on: every /v1 call needs an API key. {make}\n\nthen try:\n{example}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_stack(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    env = {**os.environ, "NEMO_GUARDRAILS_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    token_env, admin_env = config.auth.worker_token_env, config.server.admin_key_env
    if token_env and not env.get(token_env):
        # One stack, one machine: a token made now, known only to the processes started here.
        env[token_env] = secrets.token_urlsafe(32)
        print(f"{token_env} is not set: made a worker token for this stack's processes", flush=True)
    if admin_env and not env.get(admin_env):
        env[admin_env] = secrets.token_urlsafe(32)
        print(f"{admin_env} is not set: this stack's admin key (/metrics, /status) is {env[admin_env]}", flush=True)
    procs: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for name, command in tier_commands(config, args.config).items():
            print(f"starting tier '{name}': {' '.join(command[1:])}", flush=True)
            procs.append(subprocess.Popen(command, env=env))
        for name in tier_commands(config, args.config):
            base = config.tiers[name].base_url.rstrip("/")
            if not wait_ready(base.removesuffix("/v1") + "/ready", time.monotonic() + args.start_timeout):
                print(f"tier '{name}' did not become ready at {base}", file=sys.stderr)
                return 1
        router = [sys.executable, "-m", "router.cli", "serve", "--config", args.config]
        procs.append(subprocess.Popen(router, env=env))
        url = f"http://{config.server.host}:{config.server.port}"
        if not wait_ready(url + "/health", time.monotonic() + args.start_timeout):
            print("the router did not start", file=sys.stderr)
            return 1
        note = access_note(config, args.config)
        print(f"\ntiered-router is up: {url}/v1  (status: {url}/ready)\n\n{note}", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
