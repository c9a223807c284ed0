"""Worker fixtures: tiny real checkpoints built once per session, and workers served on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from router.core.config import load_config
from tests.helpers import REPO, WorkerFactory, wait_until_ready
from tests.servers import ServerThread
from workers.app import create_worker_app
from workers.engine import FaultHook
from workers.memory import MemoryProbe


@pytest.fixture(scope="session")
def checkpoint_dir() -> Path:
    """Where `make run` keeps its checkpoints too (var/checkpoints): the embedded model is converted once for
    both, and the tiny random-weight demo checkpoints are built beside it."""
    from router.core.workers import var_dir
    from workers.checkpoints import ensure_demo_checkpoints

    root = var_dir() / "checkpoints"
    ensure_demo_checkpoints(root)
    return root


@pytest.fixture
def start_worker(tmp_path: Path, checkpoint_dir: Path) -> Iterator[WorkerFactory]:
    """Serve a worker for `tier` from the shipped config, with `overrides` merged into workers.<tier>."""
    started: list[ServerThread] = []

    def start(
        tier: str = "small",
        *,
        probe: MemoryProbe | None = None,
        fault_hook: FaultHook | None = None,
        heartbeat_s: float = 1.0,
        wait_ready: bool = True,
        redis: dict[str, str] | None = None,
        **overrides: Any,
    ) -> ServerThread:
        raw = yaml.safe_load((REPO / "config" / "router.yaml").read_text())
        if redis is not None:
            raw["redis"] = redis
        worker = raw["workers"][tier]
        worker.update(checkpoint_dir=str(checkpoint_dir), device="cpu", **overrides)
        path = tmp_path / f"router-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(raw))
        config = load_config(path, environ={})
        app = create_worker_app(config, tier, probe=probe, fault_hook=fault_hook, heartbeat_s=heartbeat_s)
        server = ServerThread(app, port=overrides.get("port")).__enter__()
        started.append(server)
        if wait_ready:
            wait_until_ready(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    """The tiny random Llama (GQA: 4 query heads over 2 KV heads) the engine and prefill tests run."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=300,
    )
    return LlamaForCausalLM(config).eval()
