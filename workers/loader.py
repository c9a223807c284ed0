"""Load a worker's model and tokenizer: a path, hub id, `demo:` or `embedded:<name>`; bf16 or NF4; device from config.

Blocking (seconds to minutes): the app calls it from a worker thread in its lifespan.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.core.workers import WorkerConfig

log = logging.getLogger(__name__)

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass
class LoadedModel:
    model: Any
    """A transformers causal LM, in eval mode, on `device`."""
    tokenizer: Any
    device: str
    dtype: str
    kv_bytes_per_token: int
    weight_bytes: int
    load_seconds: float
    source: str
    max_positions: int


def prepare_cuda_env(worker: WorkerConfig) -> None:
    """PYTORCH_CUDA_ALLOC_CONF must be set before torch first touches CUDA; an explicit env var wins."""
    if worker.alloc_conf:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", worker.alloc_conf)


def prepare_compile_cache(root: Path, environ: MutableMapping[str, str] = os.environ) -> Path:
    """Point inductor's and triton's on-disk caches under `root` before anything compiles, so a restarted worker
    reuses its compiled decode step instead of compiling it again (minutes). An explicit env var wins."""
    root.mkdir(parents=True, exist_ok=True)
    environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    return root


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return "cuda:0"
    return requested


def resolve_source(worker: WorkerConfig, checkpoint_root: Path) -> str:
    if worker.model.startswith("demo:"):
        from workers.checkpoints import DEMO_SPECS, build_checkpoint

        name = worker.model.removeprefix("demo:")
        if name not in DEMO_SPECS:
            raise ValueError(f"unknown demo checkpoint {name!r} (known: {', '.join(DEMO_SPECS)})")
        log.info("building demo checkpoint %r under %s (once)", name, checkpoint_root)
        return str(build_checkpoint(checkpoint_root / name, DEMO_SPECS[name]))
    if worker.model.startswith("embedded:"):
        from workers.embedded import ensure_embedded_checkpoint

        return str(ensure_embedded_checkpoint(checkpoint_root, worker.model.removeprefix("embedded:")))
    return worker.model


def attention_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a transformers model config."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return int(config.num_hidden_layers), kv_heads, head_dim


def kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Keys and values, every layer, every KV head: 2 x layers x kv_heads x head_dim x bytes."""
    layers, kv_heads, head_dim = attention_shape(config)
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def load_model(worker: WorkerConfig, checkpoint_root: Path) -> LoadedModel:
    prepare_cuda_env(worker)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    started = time.monotonic()
    device = resolve_device(worker.device)
    on_cuda = device.startswith("cuda")
    dtype_name = worker.dtype if worker.dtype != "auto" else ("bfloat16" if on_cuda else "float32")
    dtype = getattr(torch, dtype_name)
    source = resolve_source(worker, checkpoint_root)
    log.info("loading %s (%s, %s, quantization=%s)", source, device, dtype_name, worker.quantization)
    tokenizer = AutoTokenizer.from_pretrained(source)
    from workers.attention import register

    # sdpa, except that a decode step attends over grouped KV heads without repeating them (workers/attention.py)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": register()}
    if worker.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = worker.device_map or device
    elif worker.device_map:
        kwargs["device_map"] = worker.device_map
    model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    if worker.fuse_projections:
        from workers.fuse import fuse_projections

        fuse_projections(model)
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    elapsed = time.monotonic() - started
    log.info("loaded %s in %.1fs: %.1f MB of weights", source, elapsed, weight_bytes / 1e6)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype_name,
        kv_bytes_per_token=kv_bytes_per_token(model.config, DTYPE_BYTES[dtype_name]),
        weight_bytes=weight_bytes,
        load_seconds=elapsed,
        source=source,
        max_positions=int(getattr(model.config, "max_position_embeddings", 1 << 20)),
    )
