"""Two real worker processes on ONE simulated GPU: each is charged with its own memory alone, in either start order.

The device is `SimulatedGpu` over a shared file (workers.memory): each worker process records what it allocates
under its PID, and the test plays a third process taking memory through `external_bytes`. Everything else is real:
the CLI's worker processes, the tiny demo checkpoints, the ledger, HTTP.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers import REPO
from tests.servers import cli_process, free_port
from workers.memory import SimulatedGpu

MIB = 1024 * 1024
TOTAL = 96 * MIB
MARGIN = MIB
FRACTIONS = {"small": 0.0625, "large": 0.5}
"""6 MiB for the small demo model (2 MB of weights), 48 MiB for the large one (16 MB): the other's use, charged
by mistake, would change the budget (small then large) or leave no room at all (large then small)."""
MAX_SEQ_LEN = 256
HELLO = [{"role": "user", "content": "Hi"}]


def worker_config(tmp_path: Path, checkpoint_dir: Path, ports: dict[str, int]) -> Path:
    raw = yaml.safe_load((REPO / "config" / "router.yaml").read_text())
    for tier, fraction in FRACTIONS.items():
        raw["workers"][tier] = {
            "model": f"demo:{tier}",
            "device": "cpu",
            "port": ports[tier],
            "checkpoint_dir": str(checkpoint_dir),
            "max_seq_len": MAX_SEQ_LEN,
            "max_tokens_cap": 200,
            "max_tokens_default": 64,
            "max_batch_size": 64,  # the memory share binds, not the batch size
            "vram": {
                "budget_fraction": fraction,
                "safety_margin_bytes": MARGIN,
                "simulate_total_bytes": TOTAL,
                "simulate_shared_path": "gpu.json",  # relative to this file: one device for both
            },
        }
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def memory(port: int) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/v1/memory", timeout=30).json()
    return state


def chat(port: int, max_tokens: int) -> httpx.Response:
    body = {"messages": HELLO, "max_tokens": max_tokens}
    return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120)


def check_one_device(order: tuple[str, ...], ports: dict[str, int], shared: Path) -> dict[str, dict[str, Any]]:
    """Both workers' readings, asserted: each its share, both one device; then a third process squeezes it."""
    state = {tier: memory(ports[tier]) for tier in order}
    used = sum(s["own"] for s in state.values())
    for tier, s in state.items():
        assert (s["device"], s["accounting"], s["total"]) == ("simulated", "simulated", TOTAL), s
        assert 0 < s["fixed"] < s["own"], s
        share = int(TOTAL * FRACTIONS[tier]) - s["fixed"] - MARGIN
        row = MAX_SEQ_LEN * s["kv_bytes_per_token"]
        assert share - row < s["budget"] <= share, (order, tier, s)  # its share, in whole cache rows
        assert s["device_free"] == TOTAL - used - MARGIN, "both see one device, holding both workers"
        assert s["free"] == s["budget"] and s["reserved"] == 0

    # A third process takes all but 100 tokens' worth of the small worker's KV cache.
    gpu = SimulatedGpu(TOTAL, shared)
    per_token = state["small"]["kv_bytes_per_token"]
    gpu.external_bytes = TOTAL - used - MARGIN - 100 * per_token
    for tier, s in ((tier, memory(ports[tier])) for tier in order):
        assert s["budget"] == state[tier]["budget"], "another process's use is not taken from the share"
        assert s["fixed"] == state[tier]["fixed"] and s["own"] == state[tier]["own"]
        assert s["device_free"] == 100 * per_token and s["free"] == 100 * per_token < s["budget"], s
    refused = chat(ports["small"], 150)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "vram_exhausted"
    assert refused.json()["error"]["free_bytes"] == 100 * per_token
    assert chat(ports["small"], 4).status_code == 200, "what still fits the device is admitted"
    refused = chat(ports["large"], 150)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "vram_exhausted"
    gpu.external_bytes = 0
    deadline = time.monotonic() + 10
    while memory(ports["small"])["reserved"] and time.monotonic() < deadline:
        time.sleep(0.05)  # the answered request's reservation is released as its stream closes
    assert all(memory(ports[tier])["free"] == state[tier]["budget"] for tier in order)
    return state


def test_two_workers_on_one_gpu_each_get_their_share_in_either_start_order(
    checkpoint_dir: Path, tmp_path: Path
) -> None:
    """small, then large beside it; small stops (its memory is freed) and starts again beside the running large."""
    ports = {tier: free_port() for tier in FRACTIONS}
    config = worker_config(tmp_path, checkpoint_dir, ports)

    def start(tier: str) -> AbstractContextManager[Any]:
        args = ["worker", "--tier", tier, "--config", str(config)]
        return cli_process(args, f"http://127.0.0.1:{ports[tier]}/ready", ready_s=240)  # a loaded 2-core machine

    with ExitStack() as large:
        with start("small"):
            large.enter_context(start("large"))  # the second starts once the first is ready, holding its memory
            small_first = check_one_device(("small", "large"), ports, tmp_path / "gpu.json")
        alone = memory(ports["large"])
        assert alone["device_free"] == TOTAL - alone["own"] - MARGIN, "a worker that exited holds nothing"
        with start("small"):
            large_first = check_one_device(("large", "small"), ports, tmp_path / "gpu.json")
    for tier in FRACTIONS:  # whichever started second: the same fixed cost, the same budget
        assert (small_first[tier]["fixed"], small_first[tier]["budget"]) == (
            large_first[tier]["fixed"],
            large_first[tier]["budget"],
        )
