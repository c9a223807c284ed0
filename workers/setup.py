"""Assemble a worker: load the model, size the KV cache to the memory budget, capture graphs, open the ledger.

Blocking; runs in a thread from the app's lifespan. The order matters: the memory probe comes first (a CUDA probe
measures this process's context as it creates it), the cache is sized from what is left of this worker's share after
its own weights, and the fixed cost is measured after the graphs exist, so the ledger counts them. Only this
process's own use is charged to its share: other processes on the device limit what it can still give, not the share.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from router.core.config import Config
from router.core.workers import WorkerConfig
from workers.engine import Engine, FaultHook
from workers.grammar import GrammarCompiler
from workers.kv_cache import SlotKVCache
from workers.ledger import VramLedger
from workers.loader import LoadedModel, attention_shape, load_model, prepare_cuda_env, resolve_device
from workers.memory import CudaProbe, HostProbe, MemoryProbe, SimulatedGpu
from workers.runner import ModelRunner
from workers.service import WorkerService

log = logging.getLogger(__name__)

GRAPH_ALLOWANCE = 256 * 1024 * 1024
"""Kept aside for the CUDA graph pools when sizing the cache; the real cost is measured afterwards."""


def choose_probe(config: Config, worker: WorkerConfig, device: str) -> MemoryProbe:
    vram = worker.vram
    if vram.simulate_total_bytes is not None:
        shared = config.resolve_path(vram.simulate_shared_path) if vram.simulate_shared_path else None
        return SimulatedGpu(vram.simulate_total_bytes, shared)
    if device.startswith("cuda"):
        return CudaProbe.open(torch.device(device).index or 0)
    return HostProbe()


def size_cache(worker: WorkerConfig, probe: MemoryProbe, loaded: LoadedModel, used: int) -> tuple[int, int]:
    """(rows, width): the most of max_batch_size x max_seq_len that fits the budget next to this worker's own `used`."""
    width = min(worker.max_seq_len, loaded.max_positions)
    share = int(probe.total_bytes() * worker.vram.budget_fraction) - used
    # Other processes' use does not shrink this worker's share, but the device cannot give more than it has free.
    available = min(share, probe.free_bytes()) - worker.vram.safety_margin_bytes
    if loaded.device.startswith("cuda"):
        available -= GRAPH_ALLOWANCE
    rows = min(worker.max_batch_size, max(0, available) // (width * loaded.kv_bytes_per_token))
    if rows < 1:
        raise RuntimeError(
            f"no room for a KV cache of one {width}-token sequence ({width * loaded.kv_bytes_per_token} bytes): "
            f"{available} bytes of the budget are left after the weights; lower max_seq_len or raise budget_fraction"
        )
    if rows < worker.max_batch_size:
        log.warning("memory budget fits %d of %d batch rows at %d tokens", rows, worker.max_batch_size, width)
    return rows, width


def build_service(
    config: Config, tier: str, worker: WorkerConfig, probe: MemoryProbe | None, fault_hook: FaultHook | None
) -> WorkerService:
    prepare_cuda_env(worker)
    probe = probe or choose_probe(config, worker, resolve_device(worker.device))
    loaded = load_model(worker, config.checkpoint_root(worker))
    device = torch.device(loaded.device)
    probe.allocated(loaded.weight_bytes)
    rows, width = size_cache(worker, probe, loaded, probe.own_bytes())
    layers, kv_heads, head_dim = attention_shape(loaded.model.config)
    dtype = getattr(torch, loaded.dtype)
    cache = SlotKVCache(
        layers=layers, max_batch=rows, kv_heads=kv_heads, max_len=width, head_dim=head_dim, dtype=dtype, device=device
    )
    probe.allocated(cache.nbytes)
    runner = ModelRunner(
        loaded.model, cache, use_graphs=worker.cuda_graphs, prefill_chunk=worker.prefill_chunk, compile=worker.compile
    )
    graphs = runner.capture_graphs()
    fixed = _fixed_cost(probe, cache, graphs.pool_bytes)
    ledger = VramLedger(
        probe,
        kv_bytes_per_token=loaded.kv_bytes_per_token,
        fixed_bytes=fixed,
        pool_bytes=cache.nbytes,
        budget_fraction=worker.vram.budget_fraction,
        margin_bytes=worker.vram.safety_margin_bytes,
    )
    engine = Engine(
        runner, loaded.tokenizer, ledger, eos_ids=_eos_ids(loaded), queue_size=worker.queue_size, fault_hook=fault_hook
    )
    log.info(
        "'%s' worker: %d rows x %d tokens of KV cache (%.1f MB), fixed cost %.1f MB (graphs %.1f MB), %s",
        tier,
        rows,
        width,
        cache.nbytes / 1e6,
        fixed / 1e6,
        graphs.pool_bytes / 1e6,
        "CUDA graphs" if runner.use_graphs else "eager decoding",
    )
    grammar = GrammarCompiler(loaded.tokenizer, engine.vocab_size)  # the logits' width: masks cover every row
    return WorkerService(worker.served_name or tier, worker, engine, loaded.tokenizer, ledger, grammar)


def _fixed_cost(probe: MemoryProbe, cache: SlotKVCache, graph_bytes: int) -> int:
    """What this worker holds besides the KV cache (weights, context, graph pools), none of other processes' use."""
    probe.allocated(graph_bytes)  # a real device notices by itself
    return probe.own_bytes() - cache.nbytes


def _eos_ids(loaded: LoadedModel) -> set[int]:
    ids: set[int] = set()
    for source in (loaded.model.generation_config, loaded.model.config, loaded.tokenizer):
        value: Any = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids
