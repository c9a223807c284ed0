"""deploy/kubernetes: both overlays (and the vLLM example) render with `kubectl kustomize`, validate against the
Kubernetes schemas (kubernetes-validate), and give each pod an environment the real config loader accepts.

`kubectl` is Debian's kubernetes-client (.ci/run installs it and sets REQUIRE_KUBECTL, so CI fails instead of
skipping). The manifests are written for its kustomize v2 as well as today's kustomize v5.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from router.core.config import load_config
from tests.helpers import REPO
from tests.test_deploy import assert_redis_acl_serves_the_router_only

KUSTOMIZE = REPO / "deploy" / "kubernetes"
TARGETS = {"gpu": "overlays/gpu", "cpu": "overlays/cpu", "vllm-large": "examples/vllm-large"}
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
"""The oldest release still in common managed offerings when this was written, and the newest known."""
SECRETS = {
    "REDIS_PASSWORD": "s3cret-redis",
    "WORKER_REDIS_PASSWORD": "s3cret-worker",
    "WORKER_TOKEN": "s3cret-token",
    "ADMIN_KEY": "s3cret-admin",
    "OPENAI_API_KEY": "sk-remote",
    "VLLM_API_KEY": "",
}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    # The part of the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1, its openAPIV3Schema) that
    # these manifests use, with unknown fields refused: kubernetes-validate knows only built-in kinds.
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"},
                            "authorization": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"type": "string"},
                                    "credentials": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["key"],
                                        "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("REQUIRE_KUBECTL"):
            pytest.fail("kubectl is missing and REQUIRE_KUBECTL is set (Debian package kubernetes-client)")
        pytest.skip("kubectl is not installed (Debian package kubernetes-client; .ci/run installs it)")
    return found


def checkout(root: Path, secrets: dict[str, str] | None) -> Path:
    """deploy/kubernetes and config/ as a fresh clone has them, plus secrets.env when `secrets` is given."""
    shutil.copytree(KUSTOMIZE, root / "deploy" / "kubernetes", ignore=shutil.ignore_patterns("secrets.env"))
    shutil.copytree(REPO / "config", root / "config")
    if secrets is not None:
        lines = (f"{name}={value}" for name, value in secrets.items())
        (root / "deploy" / "kubernetes" / "base" / "secrets.env").write_text("\n".join(lines) + "\n")
    return root / "deploy" / "kubernetes"


def kustomize(target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl(), "kustomize", str(target)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    root = checkout(tmp_path_factory.mktemp("clone"), SECRETS)
    out: dict[str, list[dict[str, Any]]] = {}
    for name, target in TARGETS.items():
        done = kustomize(root / target)
        assert done.returncode == 0, done.stderr
        out[name] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return out


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def pod_env(docs: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    """The environment the kubelet gives the container: values, Secret keys, and `$(VAR)` references to variables
    defined before them, expanded."""
    secret = find(docs, "Secret", "tiered-router-secrets")
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    env: dict[str, str] = {}
    for var in container(docs, deployment)["env"]:
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        if ref["key"] in data:
            env[var["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional"), f"{deployment}: {var['name']} needs {ref['key']}, which the Secret lacks"
    return env


def pod_config(docs: list[dict[str, Any]], deployment: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The config file the container is started with, taken from the rendered ConfigMap it mounts, and its env."""
    spec = container(docs, deployment)
    path = spec["args"][spec["args"].index("--config") + 1]
    mount = next(m for m in spec["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volumes = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]["volumes"]
    config_map = next(v["configMap"]["name"] for v in volumes if v["name"] == mount["name"])
    data = find(docs, "ConfigMap", config_map)["data"]
    written = tmp_path / deployment / Path(path).name
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(data[Path(path).name])
    return written, pod_env(docs, deployment)


@pytest.mark.parametrize("target", TARGETS)
def test_every_manifest_is_valid_for_kubernetes(rendered: dict[str, list[dict[str, Any]]], target: str) -> None:
    docs = rendered[target]
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # raises, naming the field, if not valid
    kinds = {
        (d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "ConfigMap" else d["metadata"]["name"])
        for d in docs
    }
    assert {
        ("Deployment", "router"),
        ("HorizontalPodAutoscaler", "router"),
        ("PodDisruptionBudget", "router"),
        ("ServiceMonitor", "router"),
        ("Deployment", "redis"),
        ("Deployment", "worker-small"),
        ("ConfigMap", "tiered-router-config"),
        ("Secret", "tiered-router-secrets"),
    } <= kinds
    assert all(d["metadata"].get("namespace") == "tiered-router" for d in docs if d["kind"] != "Namespace")


def test_a_schema_error_is_caught() -> None:
    """The validation can fail: a probe with a misspelt field, and a ServiceMonitor field that does not exist."""
    router = next(yaml.safe_load_all((KUSTOMIZE / "base" / "router.yaml").read_text()))
    router["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["prot"] = 8000
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(router, KUBERNETES_VERSIONS[-1], strict=True)
    monitor = yaml.safe_load((KUSTOMIZE / "base" / "servicemonitor.yaml").read_text())
    monitor["metadata"]["namespace"] = "tiered-router"
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    monitor["spec"]["endpoints"][0]["bearerTokenFile"] = "/var/run/token"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)


def test_rendering_refuses_without_secrets_and_the_example_ships_none(tmp_path: Path) -> None:
    done = kustomize(checkout(tmp_path, None) / "overlays" / "gpu")
    assert done.returncode != 0 and "secrets.env" in done.stderr
    example = (KUSTOMIZE / "base" / "secrets.env.example").read_text().splitlines()
    values = dict(line.split("=", 1) for line in example if line and not line.startswith("#"))
    assert values == dict.fromkeys(SECRETS, ""), "the example must not ship a secret"
    assert "secrets.env" in (REPO / ".gitignore").read_text()


@pytest.mark.parametrize(
    ("target", "config", "large_url"),
    [
        ("gpu", "gpu.yaml", "http://worker-large:8002/v1"),
        ("cpu", "router.yaml", "http://worker-large:8002/v1"),
        ("vllm-large", "gpu.yaml", "http://vllm.vllm.svc.cluster.local:8000/v1"),
    ],
)
def test_each_pod_gets_an_environment_the_config_loader_accepts(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path, target: str, config: str, large_url: str
) -> None:
    docs = rendered[target]
    path, env = pod_config(docs, "router", tmp_path)
    assert path.name == config and path.read_text() == (REPO / "config" / config).read_text()
    routed = load_config(path, environ=env)
    assert routed.server.host == "0.0.0.0" and routed.redis.url == "redis://router:s3cret-redis@redis:6379/0"
    # Secure by default, as compose: keys required, workers behind the token, ops endpoints behind the admin key.
    assert routed.auth.enabled and routed.auth.redis_keys
    assert env[routed.auth.worker_token_env or ""] == SECRETS["WORKER_TOKEN"]
    assert env[routed.server.admin_key_env or ""] == SECRETS["ADMIN_KEY"]
    assert routed.tiers["small"].base_url == "http://worker-small:8001/v1"
    assert routed.tiers["large"].base_url == large_url
    assert env[routed.tiers["remote"].api_key_env or ""] == SECRETS["OPENAI_API_KEY"]
    assert routed.resolve_path(routed.guardrails.path) == Path("/app/config/guardrails")  # the image's
    router = container(docs, "router")
    assert router["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert router["livenessProbe"]["httpGet"]["path"] == "/health"
    assert router["ports"] == [{"name": "http", "containerPort": routed.server.port}]

    workers = ["small"] if target == "vllm-large" else ["small", "large"]
    for tier in workers:
        name = f"worker-{tier}"
        path, env = pod_config(docs, name, tmp_path)
        loaded = load_config(path, environ=env)
        worker = loaded.worker(tier)
        assert env[loaded.auth.worker_token_env or ""] == SECRETS["WORKER_TOKEN"], "workers accept only the router"
        assert loaded.redis.url == "redis://worker:s3cret-worker@redis:6379/0", "workers use their own Redis user"
        spec = container(docs, name)
        assert spec["args"][:4] == ["tiered-router", "worker", "--tier", tier]
        assert spec["ports"] == [{"name": "http", "containerPort": worker.port}]
        assert spec["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert spec["livenessProbe"]["httpGet"]["path"] == "/health"
        service = find(docs, "Service", name)["spec"]
        assert service["ports"][0]["port"] == worker.port
        # Its heartbeat names the router's static URL for the tier, so the router takes it without discover_from.
        assert worker.advertise_url == routed.tiers[tier].base_url == f"http://{name}:{worker.port}/v1"
        gpus = spec["resources"].get("limits", {}).get("nvidia.com/gpu")
        volumes = {v["name"]: v for v in find(docs, "Deployment", name)["spec"]["template"]["spec"]["volumes"]}
        if config == "gpu.yaml":
            assert gpus == 1 and worker.device == "cuda" and worker.model.startswith("Qwen/")
            claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
            find(docs, "PersistentVolumeClaim", claim)
        else:
            assert gpus is None and worker.device == "cpu" and worker.model == "embedded:smollm2-135m-instruct"
    if target == "vllm-large":
        assert not [d for d in docs if d["metadata"]["name"].endswith("-large")]
        assert routed.tiers["large"].kind == "remote" and routed.tiers["large"].api_key_env == "VLLM_API_KEY"
        assert routed.tiers["large"].telemetry_source() == "vllm"


def test_the_router_scales_out_and_is_scraped(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu"]
    deployment = find(docs, "Deployment", "router")
    hpa = find(docs, "HorizontalPodAutoscaler", "router")["spec"]
    pdb = find(docs, "PodDisruptionBudget", "router")["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2 and hpa["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "router"}
    assert pdb["maxUnavailable"] == 1 and pdb["selector"]["matchLabels"].items() <= labels.items()
    service = find(docs, "Service", "router")
    monitor = find(docs, "ServiceMonitor", "router")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    endpoint = monitor["endpoints"][0]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["authorization"]["credentials"] == {"name": "tiered-router-secrets", "key": "ADMIN_KEY"}


def test_the_manifests_redis_acl_serves_the_router_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The Redis container's own command line, run by a real redis-server: no default user, `router` and `worker`
    as compose has them; and it refuses to start while a password is empty."""
    docs = rendered["gpu"]
    script = container(docs, "redis")["args"][0]
    env = pod_env(docs, "redis")
    line = next(line for line in script.splitlines() if line.strip().startswith("exec redis-server"))
    args = shlex.split(re.sub(r"\$(\w+)", lambda m: env[m.group(1)], line))[2:]
    assert_redis_acl_serves_the_router_only(args, SECRETS["REDIS_PASSWORD"], SECRETS["WORKER_REDIS_PASSWORD"])
    # PATH without redis-server: were the check missing, `exec` would fail with 127 instead of starting a server.
    unset = {**env, "REDIS_PASSWORD": "", "PATH": "/nonexistent"}
    empty = subprocess.run(["/bin/sh", "-c", script], env=unset, capture_output=True, text=True, timeout=10)
    assert empty.returncode == 1 and "REDIS_PASSWORD" in empty.stderr
