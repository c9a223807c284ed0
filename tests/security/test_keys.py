"""Issue 17 point 1, the first key: `tiered-router add-key` makes a random key, stores only its SHA-256 in Redis
and prints the key once; a real router then accepts it, and not after `revoke-key`. A router with auth on and no
way to hold a valid key does not start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import redis

from router.decide.access import hash_key
from tests.helpers import REPO, RouterFactory, router_yaml, write_config
from tests.servers import ServerThread

QUESTION = {"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120, input=stdin
    )


def keyed(standins: dict[str, ServerThread], redis_url: str) -> dict[str, Any]:
    raw = router_yaml(*(f"{standins[t].url}/v1" for t in ("small", "large", "remote")))
    raw["auth"] = {"enabled": True, "redis_keys": True}
    raw["redis"] = {"url": redis_url, "prefix": "keys-test:"}
    return raw


def test_add_key_stores_only_the_digest_and_the_router_accepts_it_until_revoked(
    start_router: RouterFactory, standins: dict[str, ServerThread], redis_url: str, tmp_path: Path
) -> None:
    raw = keyed(standins, redis_url)
    config = write_config(tmp_path / "router.yaml", raw)
    made = cli("add-key", "--name", "alice", "--tiers", "small,large", "--rpm", "30", "--config", str(config))
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("sk-tr-") and len(key) > 40 and "alice" in made.stderr
    stored = redis.Redis.from_url(redis_url).get(f"keys-test:keys:{hash_key(key)}")
    assert stored is not None and key.encode() not in stored and b'"alice"' in stored

    router = start_router(raw)
    url = f"{router.url}/v1/chat/completions"
    assert httpx.post(url, json=QUESTION).status_code == 401
    accepted = httpx.post(url, json=QUESTION, headers={"authorization": f"Bearer {key}"})
    assert accepted.status_code == 200, accepted.text
    assert accepted.headers["x-router-tier"] in {"small", "large"}

    revoked = cli("revoke-key", "--config", str(config), stdin=key + "\n")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert httpx.post(url, json=QUESTION, headers={"authorization": f"Bearer {key}"}).status_code == 401


def test_add_key_refuses_an_unknown_tier_and_a_config_without_redis(tmp_path: Path) -> None:
    raw = router_yaml("http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1")
    config = write_config(tmp_path / "router.yaml", raw)
    unknown = cli("add-key", "--name", "bob", "--tiers", "huge", "--config", str(config))
    assert unknown.returncode == 2 and "unknown tier(s) huge" in unknown.stderr
    no_redis = cli("add-key", "--name", "bob", "--config", str(config))
    assert no_redis.returncode == 2 and "redis.url is not set" in no_redis.stderr and not no_redis.stdout


def test_a_router_with_auth_on_and_no_possible_key_does_not_start(tmp_path: Path) -> None:
    raw = router_yaml("http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1")
    raw["auth"] = {"enabled": True, "keys": [], "redis_keys": True}
    config = write_config(tmp_path / "router.yaml", raw)
    refused = cli("serve", "--config", str(config))
    assert refused.returncode == 2
    assert "auth is on but no key could ever be valid" in refused.stderr and "add-key" in refused.stderr
