"""`compile: true` keeps inductor's and triton's caches under the var directory (a volume in compose), named before
anything compiles, so a restarted worker reuses its compiled decode step."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from router.core.config import Config
from tests.helpers import WorkerFactory
from workers.loader import prepare_compile_cache

CACHE_VARS = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Neither variable set (and both removed again afterwards, so later tests compile where they did)."""
    for name in CACHE_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_default_cache_is_under_the_var_dir(
    clean_env: pytest.MonkeyPatch, shipped_config: Config, tmp_path: Path
) -> None:
    clean_env.setenv("TIERED_ROUTER_VAR", str(tmp_path / "var"))
    root = shipped_config.compile_cache_root(shipped_config.worker("large"))
    assert root == tmp_path / "var" / "compile-cache"


def test_a_worker_that_compiles_names_its_cache_before_anything_compiles(
    clean_env: pytest.MonkeyPatch, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    start_worker("small", compile=True, compile_cache_dir=str(tmp_path / "cache"))
    inductor = tmp_path / "cache" / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(inductor)
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "triton")
    # What inductor compiles from now on is written there (a fresh constant: no in-memory cache hit).
    scale = random.random()
    compiled = torch.compile(lambda x: torch.sin(x) * scale + 1)
    x = torch.randn(8)
    assert torch.allclose(compiled(x), torch.sin(x) * scale + 1)
    assert any(path.is_file() for path in inductor.rglob("*")), "inductor wrote nothing under the configured cache"


def test_an_explicit_environment_variable_wins(tmp_path: Path) -> None:
    environ = {"TORCHINDUCTOR_CACHE_DIR": "/elsewhere"}
    prepare_compile_cache(tmp_path / "cache", environ)
    assert environ == {"TORCHINDUCTOR_CACHE_DIR": "/elsewhere", "TRITON_CACHE_DIR": str(tmp_path / "cache" / "triton")}
