"""compose.yaml and the Dockerfile: what the deployment promises, checked against the real config loader.

`.ci/run` also validates compose.yaml with `docker-compose config` (Debian's docker-compose); this test
checks what a schema cannot: that the environment each service gets yields a valid router/worker config.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
import redis
import yaml

from router.core.config import load_config
from router.core.state import RedisStore
from tests.helpers import REPO
from tests.servers import redis_server

COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
EXAMPLE_ENV = dict(
    line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines() if line and not line.startswith("#")
)
SECRETS = {
    "REDIS_PASSWORD": "s3cret-redis",
    "WORKER_REDIS_PASSWORD": "s3cret-worker",
    "WORKER_TOKEN": "s3cret-token",
    "ADMIN_KEY": "s3cret-admin",
}
DOTENV = {**EXAMPLE_ENV, **SECRETS}
"""What an operator's .env holds: .env.example with its secrets filled in."""


def resolved(environment: dict[str, Any]) -> dict[str, str]:
    """The service's environment as compose would pass it with .env.example as .env."""

    def interpolate(value: Any) -> str:
        def one(match: re.Match[str]) -> str:
            name, kind, default = match.group(1), match.group(2), match.group(3) or ""
            if kind == ":?":
                assert DOTENV.get(name), f"{name} is required: {default}"
                return DOTENV[name]
            return DOTENV.get(name) or default

        return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, str(value))

    return {key: interpolate(value) for key, value in environment.items()}


def ready_port(service: dict[str, Any]) -> str:
    test = " ".join(service["healthcheck"]["test"])
    found = re.search(r"127\.0\.0\.1:(\d+)/ready", test)
    assert found, test
    return found.group(1)


@pytest.mark.parametrize(
    ("profile", "router", "small", "large", "config"),
    [
        ("gpu", "router", "worker-small", "worker-large", "config/gpu.yaml"),
        ("cpu", "router-cpu", "worker-small-cpu", "worker-large-cpu", "config/router.yaml"),
    ],
)
def test_each_profile_is_a_whole_stack_that_starts_in_order(
    profile: str, router: str, small: str, large: str, config: str
) -> None:
    for name in (router, small, large):
        assert SERVICES[name]["profiles"] == [profile]
        assert config in SERVICES[name]["command"]
        assert SERVICES[name]["healthcheck"]["test"][0] == "CMD"
    assert "profiles" not in SERVICES["redis"] and SERVICES["redis"]["image"].startswith("redis:")
    assert SERVICES["redis"]["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    assert SERVICES[router]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        small: {"condition": "service_healthy"},
        large: {"condition": "service_healthy"},
    }
    assert ready_port(SERVICES[router]) == "8000"
    assert (ready_port(SERVICES[small]), ready_port(SERVICES[large])) == ("8001", "8002")

    # The environment compose gives each service makes a valid config that points at the right places.
    routed = load_config(REPO / config, environ=resolved(SERVICES[router]["environment"]))
    assert routed.server.host == "0.0.0.0" and routed.redis.url == "redis://router:s3cret-redis@redis:6379/0"
    # Secure by default: keys required, workers behind the router's token, ops endpoints behind the admin key.
    assert routed.auth.enabled and routed.auth.redis_keys
    router_env = resolved(SERVICES[router]["environment"])
    assert router_env[routed.auth.worker_token_env or ""] == SECRETS["WORKER_TOKEN"]
    assert router_env[routed.server.admin_key_env or ""] == SECRETS["ADMIN_KEY"]
    assert SERVICES[router]["ports"] == ["${ROUTER_BIND:-127.0.0.1}:${ROUTER_PORT:-8000}:8000"]
    assert routed.tiers["small"].base_url == "http://worker-small:8001/v1"
    assert routed.tiers["large"].base_url == "http://worker-large:8002/v1"
    assert routed.tiers["remote"].base_url == DOTENV["REMOTE_BASE_URL"]
    assert (
        routed.tiers["remote"].api_key_env == "OPENAI_API_KEY" and "OPENAI_API_KEY" in SERVICES[router]["environment"]
    )
    for tier, name in (("small", small), ("large", large)):
        env = resolved(SERVICES[name]["environment"])
        loaded = load_config(REPO / config, environ=env)
        worker = loaded.worker(tier)
        assert env[loaded.auth.worker_token_env or ""] == SECRETS["WORKER_TOKEN"], "workers accept only the router"
        assert loaded.redis.url == "redis://worker:s3cret-worker@redis:6379/0", "workers use their own Redis user"
        assert worker.advertise_url == f"http://worker-{tier}:{ready_port(SERVICES[name])}/v1"
        if profile == "gpu":
            assert worker.model == DOTENV[f"{tier.upper()}_MODEL"] and worker.device == "cuda"
        else:
            assert worker.model == "embedded:smollm2-135m-instruct" and worker.device == "cpu"


def test_gpu_workers_reserve_a_gpu_and_keep_models_in_a_volume() -> None:
    for name in ("worker-small", "worker-large"):
        devices = SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        assert "models:/models" in SERVICES[name]["volumes"]
    assert "${LARGE_MODEL" in str(SERVICES["worker-large"]["environment"]["TIERED_ROUTER__workers__large__model"])
    for name in ("worker-small-cpu", "worker-large-cpu"):
        assert "deploy" not in SERVICES[name]
    assert set(COMPOSE["volumes"]) == {"models", "checkpoints"}


def test_the_dockerfile_builds_a_slim_router_and_a_cuda_worker() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM (\S+) AS (\w+)$", dockerfile, re.M)[i][::-1] for i in range(3))
    assert stages["router"].startswith("python:3.11-slim")
    assert stages["worker"].startswith("nvidia/cuda:") and "runtime" in stages["worker"]
    assert SERVICES["router"]["build"]["target"] == "router" and SERVICES["worker-large"]["build"]["target"] == "worker"
    assert "whl/cpu" in dockerfile and "whl/cu130" in dockerfile
    # both images install exactly uv.lock (by hash), torch excepted, which comes from PyTorch's index per device
    assert "uv export --frozen" in dockerfile
    assert dockerfile.count("pip install --no-deps --require-hashes -r requirements.lock.txt") == 2


def test_compose_needs_every_secret_and_the_example_leaves_them_empty() -> None:
    text = (REPO / "compose.yaml").read_text()
    for name in SECRETS:
        assert f"${{{name}:?" in text, f"compose must refuse to start without {name}"
        assert EXAMPLE_ENV[name] == "", f".env.example must not ship a value for {name}"
    assert EXAMPLE_ENV["ROUTER_BIND"] == "127.0.0.1"


def redis_args() -> list[str]:
    """compose's redis-server options, as compose passes them with the .env secrets."""
    command = [str(part) for part in SERVICES["redis"]["command"]]
    assert command[0] == "redis-server"
    args = command[1:]
    for name in ("REDIS_PASSWORD", "WORKER_REDIS_PASSWORD"):
        args = [arg.replace(f"${{{name}:?set {name} in .env}}", SECRETS[name]) for arg in args]
    return args


def test_composes_redis_acl_serves_the_router_and_nothing_else() -> None:
    """The real redis-server, started with compose's options."""
    assert_redis_acl_serves_the_router_only(redis_args(), SECRETS["REDIS_PASSWORD"], SECRETS["WORKER_REDIS_PASSWORD"])


def assert_redis_acl_serves_the_router_only(args: list[str], router_password: str, worker_password: str) -> None:
    """A real redis-server started with `args`: the router's store works as user `router` (keys, heartbeats,
    counters, the token bucket's script), and nobody else gets in, nor does `router` reach admin commands or other
    keys; the workers' user reaches the heartbeats only. (tests/test_kubernetes.py runs it on the manifests' Redis.)"""
    with redis_server(args, user="router", password=router_password) as url:
        store = RedisStore.from_url(url, "tiered-router:", timeout_s=3.0)

        async def use() -> None:
            await store.put("workers:small:a:1", b"{}", ttl_s=5)
            assert await store.scan("workers:small:") == {"workers:small:a:1": b"{}"}
            await store.add_counts("routed", {"small": 2})
            assert (await store.read_counts("routed"))["small"] == 2
            assert await store.rate_admit("key:alice", (60, 1000), (1, 10)) == 0.0
            assert await store.ping()
            await store.delete("workers:small:a:1")
            await store.close()

        asyncio.run(use())
        port = url.rsplit(":", 1)[1].split("/")[0]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=int(port)).ping()  # no default user
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=int(port), username="router", password="wrong").ping()
        router = redis.Redis.from_url(url)
        with pytest.raises(redis.exceptions.NoPermissionError):
            router.set("someone-else:key", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            router.flushall()
        router.close()
        # The workers' user: heartbeats only, so a worker's password cannot make API keys.
        worker = redis.Redis(port=int(port), username="worker", password=worker_password)
        worker.set("tiered-router:workers:small:w:8001", "{}", px=5000)
        worker.delete("tiered-router:workers:small:w:8001")
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.set("tiered-router:keys:" + "0" * 64, '{"name": "minted"}')
        worker.close()
