"""The worker's own loading code: NF4 through bitsandbytes for real on the CPU, dtype and KV sizing."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import torch
from transformers import LlamaConfig, Qwen2Config

from router.core.workers import WorkerConfig
from workers.fuse import FusedProjection
from workers.loader import kv_bytes_per_token, load_model


def test_nf4_load_path_runs_on_the_cpu(checkpoint_dir: Path) -> None:
    worker = WorkerConfig(model="demo:large", device="cpu", dtype="bfloat16", quantization="nf4")
    loaded = load_model(worker, checkpoint_dir)
    linears = [
        m for name, m in loaded.model.named_modules() if name.startswith("model.layers.") and hasattr(m, "in_features")
    ]
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)
    fused = {id(m.linear) for m in loaded.model.modules() if isinstance(m, FusedProjection)}
    assert len(fused) == 2 * loaded.model.config.num_hidden_layers, "q/k/v and gate/up stacked (fuse_projections)"
    for layer in linears:
        assert layer.weight.quant_type == "nf4"
        # double quantization, but for the stacked weights' scales, kept exact in float32 (see workers/fuse.py)
        assert layer.weight.quant_state.nested != (id(layer) in fused)
        assert layer.weight.dtype == torch.uint8
    assert loaded.model.config.quantization_config.bnb_4bit_compute_dtype == torch.bfloat16
    full = load_model(WorkerConfig(model="demo:large", device="cpu", dtype="bfloat16"), checkpoint_dir)
    assert loaded.weight_bytes < full.weight_bytes / 2, "4-bit weights take well under half the bf16 bytes"
    chat = [{"role": "user", "content": "hi"}]
    ids = loaded.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([ids])).logits
    assert torch.isfinite(logits).all()


def test_kv_bytes_per_token_from_real_configs() -> None:
    qwen7b = Qwen2Config(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4)
    assert kv_bytes_per_token(qwen7b, 2) == 2 * 28 * 4 * 128 * 2  # 57,344 bytes: ~0.23 GB for a 4k-token request
    llama7b = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
    assert kv_bytes_per_token(llama7b, 2) == 2 * 32 * 32 * 128 * 2


def test_dtype_follows_the_device(checkpoint_dir: Path) -> None:
    loaded = load_model(WorkerConfig(model="demo:small", device="cpu"), checkpoint_dir)
    assert loaded.dtype == "float32" and next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.kv_bytes_per_token == kv_bytes_per_token(loaded.model.config, 4)
