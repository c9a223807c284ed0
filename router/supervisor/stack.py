"""`tiered-router up`: start the whole stack on one machine (router + a process per local tier) and keep it up.

Each tier whose base_url is on this machine gets a process listening on that URL's port; the router starts once
they answer. A process that dies afterwards (a worker the OOM killer took, the router itself) is started again
with backoff (`processes.RestartPolicy`) while the router's fallback serves the dead tier's requests. A process
that fails to start at first fails `up`. Ctrl-C (or SIGTERM) stops everything, a pending restart included.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time
from urllib.parse import urlsplit

from router.core.config import Config, load_config
from router.supervisor.processes import ProcessSupervisor, RestartPolicy, SupervisedProcess, describe_exit, wait_ready

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
            f"Make one (stored in Redis, shown once):\n  KEY=$(tiered-router add-key --name me --config {config_path})"
        )
    else:
        make = "Use one listed under auth.keys (their SHA-256: `tiered-router hash-key`) as $KEY."
    return f"auth is on: every /v1 call needs an API key. {make}\n\nthen try:\n{example}"


_RESTART_FLAGS = {"initial_s": "--restart-delay", "factor": "--restart-factor", "max_s": "--restart-max-delay"}
_RESTART_FLAGS["stable_s"] = "--restart-reset-after"


def restart_policy(args: argparse.Namespace) -> RestartPolicy:
    """The policy `up`'s --restart-* flags give (RestartPolicy's defaults for those not given); ValueError names
    the flag that is out of range."""
    given = {}
    for field, flag in _RESTART_FLAGS.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        if value is not None:
            given[field] = value
    try:
        return RestartPolicy(**given)
    except ValueError as exc:
        message = str(exc)
        for field, flag in _RESTART_FLAGS.items():
            message = message.replace(field, flag)
        raise ValueError(message) from exc


def stack_env(config: Config) -> dict[str, str]:
    """The environment of the stack's processes, with the worker token and admin key made when they are unset."""
    env = {**os.environ, "NEMO_GUARDRAILS_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    token_env, admin_env = config.auth.worker_token_env, config.server.admin_key_env
    if token_env and not env.get(token_env):
        # One stack, one machine: a token made now, known only to the processes started here.
        env[token_env] = secrets.token_urlsafe(32)
        print(f"{token_env} is not set: made a worker token for this stack's processes", flush=True)
    if admin_env and not env.get(admin_env):
        env[admin_env] = secrets.token_urlsafe(32)
        print(f"{admin_env} is not set: this stack's admin key (/metrics, /status) is {env[admin_env]}", flush=True)
    return env


def _started(process: SupervisedProcess, deadline: float) -> bool:
    """Whether `process` answered its ready URL before `deadline`; if not, says why on stderr."""
    assert process.ready_url is not None
    if wait_ready(process.ready_url, deadline, process.alive):
        return True
    code = process.exit_code()
    how = "did not become ready" if code is None else f"exited ({describe_exit(code)}) before it was ready"
    print(f"{process.label} {how} at {process.ready_url}", file=sys.stderr)
    return False


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_stack(args: argparse.Namespace) -> int:
    """Start the stack and keep it up until Ctrl-C or SIGTERM (0); 1 if a process fails to start, 2 for bad flags."""
    config = load_config(args.config)
    try:
        policy = restart_policy(args)
    except ValueError as exc:
        print(f"tiered-router up: {exc}", file=sys.stderr)
        return 2
    supervisor = ProcessSupervisor(policy, stack_env(config))
    handlers = signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, _interrupt)
    try:
        commands = tier_commands(config, args.config)
        for name, command in commands.items():
            ready = config.tiers[name].base_url.rstrip("/").removesuffix("/v1") + "/ready"
            supervisor.start(name, command, label=f"tier '{name}'", ready_url=ready)
        # Start-up is not retried: a process that cannot start once (a bad model path, a port in use) fails `up`.
        if not all(_started(supervisor[name], time.monotonic() + args.start_timeout) for name in commands):
            return 1
        url = f"http://{config.server.host}:{config.server.port}"
        router = [sys.executable, "-m", "router.cli", "serve", "--config", args.config]
        supervisor.start("router", router, label="the router", ready_url=url + "/health")
        if not _started(supervisor["router"], time.monotonic() + args.start_timeout):
            return 1
        note = access_note(config, args.config)
        print(f"\ntiered-router is up: {url}/v1  (status: {url}/ready)\n\n{note}", flush=True)
        supervisor.run()
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C would leave processes behind mid-shutdown; the shutdown is bounded instead.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop()
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
