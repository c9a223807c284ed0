"""compose.yaml and the Dockerfile: what the deployment promises, checked against the real config loader.

`.ci/run` also validates compose.yaml with `docker-compose config` (Debian's docker-compose); this test
checks what a schema cannot: that the environment each service gets yields a valid router/worker config.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from router.core.config import load_config
from tests.helpers import REPO

COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOTENV = dict(
    line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines() if line and not line.startswith("#")
)


def resolved(environment: dict[str, Any]) -> dict[str, str]:
    """The service's environment as compose would pass it with .env.example as .env."""

    def interpolate(value: Any) -> str:
        def one(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2) or ""
            return DOTENV.get(name) or default

        return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", one, str(value))

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
    assert SERVICES["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert SERVICES[router]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        small: {"condition": "service_healthy"},
        large: {"condition": "service_healthy"},
    }
    assert ready_port(SERVICES[router]) == "8000"
    assert (ready_port(SERVICES[small]), ready_port(SERVICES[large])) == ("8001", "8002")

    # The environment compose gives each service makes a valid config that points at the right places.
    routed = load_config(REPO / config, environ=resolved(SERVICES[router]["environment"]))
    assert routed.server.host == "0.0.0.0" and routed.redis.url == "redis://redis:6379/0"
    assert routed.tiers["small"].base_url == "http://worker-small:8001/v1"
    assert routed.tiers["large"].base_url == "http://worker-large:8002/v1"
    assert routed.tiers["remote"].base_url == DOTENV["REMOTE_BASE_URL"]
    assert (
        routed.tiers["remote"].api_key_env == "OPENAI_API_KEY" and "OPENAI_API_KEY" in SERVICES[router]["environment"]
    )
    for tier, name in (("small", small), ("large", large)):
        env = resolved(SERVICES[name]["environment"])
        worker = load_config(REPO / config, environ=env).worker(tier)
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
