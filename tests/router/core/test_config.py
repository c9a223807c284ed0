"""Config loading: typed, validated at start-up, every error naming the file, the key and the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.core.config import ConfigError, load_config
from tests.helpers import REPO


def shipped() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((REPO / "config" / "router.yaml").read_text())
    return raw


def write(tmp_path: Path, raw: dict[str, Any] | str) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def test_shipped_config_loads(shipped_config: Any) -> None:
    assert set(shipped_config.tiers) == {"small", "large", "remote"}
    assert shipped_config.rules[-1].when.is_empty()


def test_gpu_config_loads_with_production_models() -> None:

    config = load_config(REPO / "config" / "gpu.yaml", environ={})
    small, large = config.worker("small"), config.worker("large")
    assert (small.model, small.dtype, small.quantization) == ("Qwen/Qwen2.5-1.5B-Instruct", "bfloat16", "none")
    assert (large.model, large.quantization, large.cuda_graphs) == ("Qwen/Qwen2.5-7B-Instruct", "nf4", True)


def test_invalid_worker_section_fails_at_start(tmp_path: Path) -> None:
    raw = shipped()
    raw["workers"]["large"]["quantization"] = "int3"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, raw), environ={})
    assert caught.value.key == "workers.large.quantization"
    raw = shipped()
    raw["workers"]["huge"] = {"model": "x"}
    with pytest.raises(ConfigError, match="no tier named 'huge'"):
        load_config(write(tmp_path, raw), environ={})


@pytest.mark.parametrize(
    ("mutate", "key", "reason"),
    [
        (lambda c: c["server"].update(port="eighty"), "server.port", "Expected `int`"),
        (lambda c: c["tiers"]["small"].update(colour="red"), "tiers.small", "unknown field `colour`"),
        (lambda c: c["rules"][0].update(tier="huge"), "rules[0].tier", "unknown tier 'huge'"),
        (
            lambda c: c["rules"][0]["when"].update(headers={"x-tier": "(["}),
            "rules[0].when.headers.x-tier",
            "invalid regular expression",
        ),
        (
            lambda c: c["rules"].append({"name": "late", "tier": "small", "when": {"complexity": "simple"}}),
            "rules[6].when",
            "default",
        ),
        (lambda c: c["rules"].insert(0, {"name": "all", "tier": "small"}), "rules[0].when", "only the last rule"),
        (lambda c: c["classifier"].update(kind="magic"), "classifier.kind", "unknown classifier 'magic'"),
        (lambda c: c["classifier"].update(threshold=1.5), "classifier.threshold", "Expected `float` <= 1.0"),
        (lambda c: c["tiers"]["large"].update(fallback=["nowhere"]), "tiers.large.fallback", "unknown tier 'nowhere'"),
        (lambda c: c["tiers"]["large"].update(fallback=["large"]), "tiers.large.fallback", "itself"),
        (lambda c: c["tiers"]["small"].update(base_url="ftp://x"), "tiers.small.base_url", "http(s) URL"),
        (
            lambda c: c["rules"][2]["when"].update(prompt_tokens={"min": 10, "max": 5}),
            "rules[2].when.prompt_tokens",
            "below max",
        ),
        (lambda c: c.update(rules=[]), "rules", "at least one rule"),
        (
            lambda c: c["tiers"]["small"].update(capabilities=["tools", "json_mode"]),
            "tiers.small.capabilities[1]",
            "Invalid enum value 'json_mode' (known: tools, response_format, logprobs, penalties, logit_bias, n)",
        ),
        (lambda c: c["tiers"]["small"].update(capabilities=["n", "n"]), "tiers.small.capabilities", "twice"),
        (lambda c: c["tiers"]["remote"].update(context_window=0), "tiers.remote.context_window", ">= 1"),
    ],
)
def test_invalid_config_names_file_key_and_reason(tmp_path: Path, mutate: Any, key: str, reason: str) -> None:
    raw = shipped()
    mutate(raw)
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.path == str(path)
    assert caught.value.key == key
    assert reason in caught.value.reason


def test_capabilities_default_to_all_for_remote_tiers_and_none_for_workers(tmp_path: Path) -> None:
    raw = shipped()
    for tier in raw["tiers"].values():
        tier.pop("capabilities", None)
    raw["tiers"]["large"]["capabilities"] = ["tools", "logprobs"]
    tiers = load_config(write(tmp_path, raw), environ={}).tiers
    assert tiers["small"].capable() == frozenset()
    assert tiers["large"].capable() == {"tools", "logprobs"}
    assert tiers["remote"].capable() == {"tools", "response_format", "logprobs", "penalties", "logit_bias", "n"}
    raw["tiers"]["remote"]["capabilities"] = []
    assert load_config(write(tmp_path, raw), environ={}).tiers["remote"].capable() == frozenset()


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "tiers: [unclosed"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a list"))


def test_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, shipped())
    config = load_config(
        path,
        environ={
            "TIERED_ROUTER__server__port": "9123",
            "TIERED_ROUTER__redis__url": "redis://127.0.0.1:6390/0",
            "TIERED_ROUTER__tiers__remote__model": "my-model",
            "UNRELATED": "x",
        },
    )
    assert config.server.port == 9123
    assert config.redis.url == "redis://127.0.0.1:6390/0"
    assert config.tiers["remote"].model == "my-model"
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"TIERED_ROUTER__server__port": "not-a-port"})
    assert caught.value.key == "server.port"


def test_serve_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    raw = shipped()
    raw["rules"][1]["tier"] = "medium"
    path = write(tmp_path, raw)
    result = subprocess.run(
        [sys.executable, "-m", "router.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert f"{path}: rules[1].tier: unknown tier 'medium'" in result.stderr
