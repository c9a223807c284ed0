"""Assemble a worker: load the model, size the paged KV cache to the memory budget, capture graphs, open the ledger.

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
from workers import nf4_kernels, paged_attention
from workers.engine import Engine, FaultHook
from workers.grammar import GrammarCompiler
from workers.kv_cache import PagedKVCache, blocks_for
from workers.ledger import VramLedger
from workers.loader import (
    LoadedModel,
    attention_shape,
    load_model,
    prepare_compile_cache,
    prepare_cuda_env,
    resolve_device,
)
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


def graph_allowance(worker: WorkerConfig, loaded: LoadedModel, width: int) -> int:
    """What to keep aside for the decode graphs' memory pool: a base, and the widest step's transient, one layer's
    worth (the pool reuses it layer after layer) for max_batch_size rows of `width` slots: the keys and values
    gathered from the cache and a contiguous copy of them (4 x kv_heads). Attention reads grouped KV heads without
    repeating them (workers/attention.py). That is an upper bound; the real pool is measured after capture and
    counted in the fixed cost."""
    layers, kv_heads, head_dim = attention_shape(loaded.model.config)
    element = loaded.kv_bytes_per_token // (2 * layers * kv_heads * head_dim)
    per_slot = 4 * kv_heads * head_dim * element
    return GRAPH_ALLOWANCE + worker.max_batch_size * width * per_slot


def size_cache(worker: WorkerConfig, probe: MemoryProbe, loaded: LoadedModel, used: int) -> tuple[int, int]:
    """(blocks, width): the paged pool's block count (the scratch block included) that fits this worker's share next
    to its own `used`, and the longest sequence a request may hold.

    No more blocks than max_batch_size full-length sequences could ever use; at least one full-length sequence."""
    width = min(worker.max_seq_len, loaded.max_positions)
    per_seq = blocks_for(width, worker.block_size)
    block_bytes = worker.block_size * loaded.kv_bytes_per_token
    share = int(probe.total_bytes() * worker.vram.budget_fraction) - used
    # Other processes' use does not shrink this worker's share, but the device cannot give more than it has free.
    available = min(share, probe.free_bytes()) - worker.vram.safety_margin_bytes
    if loaded.device.startswith("cuda"):
        available -= graph_allowance(worker, loaded, width)
    usable = min(worker.max_batch_size * per_seq, max(0, available) // block_bytes - 1)
    if usable < per_seq:
        raise RuntimeError(
            f"no room for a KV cache of one {width}-token sequence ({per_seq * block_bytes} bytes): "
            f"{available} bytes of the budget are left after the weights; lower max_seq_len or raise budget_fraction"
        )
    if usable < worker.max_batch_size * per_seq:
        log.info(
            "memory budget fits %d KV blocks of %d tokens: %d full %d-token sequences, or %d of %d rows at 300 tokens",
            usable,
            worker.block_size,
            usable // per_seq,
            width,
            min(worker.max_batch_size, usable // blocks_for(300, worker.block_size)),
            worker.max_batch_size,
        )
    return usable + 1, width


def build_service(
    config: Config,
    tier: str,
    worker: WorkerConfig,
    probe: MemoryProbe | None,
    fault_hook: FaultHook | None,
    *,
    loaded: LoadedModel | None = None,
) -> WorkerService:
    """`loaded`: a model already loaded for `worker` (benchmarks serve one load in several setups)."""
    if worker.compile:
        prepare_compile_cache(config.compile_cache_root(worker))
    prepare_cuda_env(worker)
    probe = probe or choose_probe(config, worker, resolve_device(worker.device))
    loaded = loaded or load_model(worker, config.checkpoint_root(worker))
    device = torch.device(loaded.device)
    if device.type == "cuda":
        # Loading leaves the allocator holding freed blocks (shards in bf16 before quantization, GBs for a 7B): hand
        # them back, or this worker's own use, and so its fixed cost, counts memory it no longer uses.
        torch.cuda.empty_cache()
    probe.allocated(loaded.weight_bytes)
    blocks, width = size_cache(worker, probe, loaded, probe.own_bytes())
    layers, kv_heads, head_dim = attention_shape(loaded.model.config)
    dtype = getattr(torch, loaded.dtype)
    cache = PagedKVCache(
        layers=layers,
        max_batch=worker.max_batch_size,
        kv_heads=kv_heads,
        max_len=width,
        head_dim=head_dim,
        dtype=dtype,
        device=device,
        num_blocks=blocks,
        block_size=worker.block_size,
    )
    probe.allocated(cache.nbytes)
    runner = ModelRunner(
        loaded.model,
        cache,
        use_graphs=worker.cuda_graphs,
        prefill_chunk=worker.prefill_chunk,
        prefill_chunk_idle=worker.prefill_chunk_idle,
        compile=worker.compile,
        read_in_place=_read_in_place(worker, device),
    )
    if worker.nf4_kernels == "measured":
        nf4_kernels.measure(loaded.model, runner.buckets)
    graphs = runner.capture_graphs()
    fixed = _fixed_cost(probe, cache, graphs.pool_bytes)
    ledger = VramLedger(
        probe,
        kv_bytes_per_token=loaded.kv_bytes_per_token,
        fixed_bytes=fixed,
        pool_bytes=cache.allocator.total * cache.block_bytes,  # the scratch block is no request's
        budget_fraction=worker.vram.budget_fraction,
        margin_bytes=worker.vram.safety_margin_bytes,
        block_size=worker.block_size,
    )
    engine = Engine(
        runner, loaded.tokenizer, ledger, eos_ids=_eos_ids(loaded), queue_size=worker.queue_size, fault_hook=fault_hook
    )
    log.info(
        "'%s' worker: %d KV blocks of %d tokens (%.1f MB) for up to %d sequences of at most %d tokens, "
        "fixed cost %.1f MB (graphs %.1f MB), %s",
        tier,
        blocks - 1,
        worker.block_size,
        cache.nbytes / 1e6,
        worker.max_batch_size,
        width,
        fixed / 1e6,
        graphs.pool_bytes / 1e6,
        "CUDA graphs" if runner.use_graphs else "eager decoding",
    )
    grammar = GrammarCompiler(loaded.tokenizer, engine.vocab_size)  # the logits' width: masks cover every row
    return WorkerService(worker.served_name or tier, worker, engine, loaded.tokenizer, ledger, grammar)


def _read_in_place(worker: WorkerConfig, device: torch.device) -> bool:
    """Whether decode steps use workers.paged_attention's kernel (`decode_attention`)."""
    if worker.decode_attention == "gather":
        return False
    usable = device.type == "cuda" and paged_attention.available()
    if worker.decode_attention == "in-place" and not usable:
        raise RuntimeError("decode_attention: in-place needs a CUDA device and Triton; use auto or gather")
    return usable


def _fixed_cost(probe: MemoryProbe, cache: PagedKVCache, graph_bytes: int) -> int:
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
