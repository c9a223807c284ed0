"""Fused q/k/v and gate/up projections: the same NF4 codes and scales re-packed, the same outputs, the same tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bitsandbytes.functional as F
import httpx
import pytest
import torch
from torch import nn

from router.core.workers import WorkerConfig
from tests.helpers import WorkerFactory
from workers.fuse import FusedProjection, ProjectionSlice, first_level_absmax
from workers.loader import load_model

ATTENTION = ("q_proj", "k_proj", "v_proj")
MLP = ("gate_proj", "up_proj")


def load(checkpoint_dir: Path, model: str, quantization: str, dtype: str, *, fuse: bool, native: bool = True) -> Any:
    """A demo checkpoint through the worker's loader. `native=False`: bitsandbytes' CPU 4-bit kernel (AVX512-BF16
    machines only) is switched off, so 4-bit matmuls take its dequantize+linear path, as on other CPUs. It is never
    switched on where bitsandbytes found no AVX512-BF16: forced there, it answers garbage (seen on an AVX2 EPYC)."""
    worker = WorkerConfig(model=model, device="cpu", dtype=dtype, quantization=quantization, fuse_projections=fuse)  # type: ignore[arg-type]
    loaded = load_model(worker, checkpoint_dir).model
    for module in loaded.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = native and F.has_avx512bf16()
    return loaded


def layer_groups(model: Any) -> list[tuple[nn.Module, str, tuple[str, ...]]]:
    return [(layer.self_attn, "qkv_proj", ATTENTION) for layer in model.model.layers] + [
        (layer.mlp, "gate_up_proj", MLP) for layer in model.model.layers
    ]


@pytest.mark.parametrize("model", ["demo:large", "demo:small"])  # llama without biases, qwen2 with q/k/v biases
def test_nf4_fusion_re_packs_the_same_codes_and_scales(checkpoint_dir: Path, model: str) -> None:
    separate = load(checkpoint_dir, model, "nf4", "bfloat16", fuse=False)
    fused = load(checkpoint_dir, model, "nf4", "bfloat16", fuse=True)
    for (parent, name, parts), (fused_parent, _, _) in zip(layer_groups(separate), layer_groups(fused), strict=True):
        linears = [getattr(parent, p) for p in parts]
        assert all(linear.weight.quant_state.nested for linear in linears), "the checkpoint is double-quantised"
        fusion = getattr(fused_parent, name)
        assert isinstance(fusion, FusedProjection)
        assert all(isinstance(getattr(fused_parent, p), ProjectionSlice) for p in parts)
        weight = fusion.linear.weight
        state = weight.quant_state
        # Not requantised: the packed 4-bit codes are the parts' bytes, one after the other.
        assert torch.equal(weight.data, torch.cat([linear.weight.data for linear in linears]))
        assert tuple(state.shape) == (sum(linear.out_features for linear in linears), linears[0].in_features)
        assert not state.nested and state.absmax.dtype == torch.float32
        scales = [first_level_absmax(linear.weight.quant_state) for linear in linears]
        assert torch.equal(state.absmax, torch.cat(scales))
        # ... and bitsandbytes' own dequantisation of either gives the same bf16 weights, bit for bit.
        expected = torch.cat([F.dequantize_4bit(linear.weight.data, linear.weight.quant_state) for linear in linears])
        assert torch.equal(F.dequantize_4bit(weight.data, state), expected)
        if linears[0].bias is not None:
            assert torch.equal(fusion.linear.bias, torch.cat([linear.bias for linear in linears]))


@pytest.mark.parametrize(
    ("quantization", "dtype", "native", "exact"),
    [
        ("nf4", "bfloat16", False, True),  # dequantize+linear: the same weights, the same matmul
        ("nf4", "bfloat16", True, False),  # bitsandbytes' CPU kernel sums in an order that depends on the height
        ("none", "bfloat16", True, True),
        ("none", "float32", True, True),
    ],
)
def test_fused_projections_give_the_separate_outputs(
    checkpoint_dir: Path, quantization: str, dtype: str, native: bool, exact: bool
) -> None:
    if quantization == "nf4" and native and not F.has_avx512bf16():
        pytest.skip("bitsandbytes' native CPU 4-bit kernel needs AVX512-BF16, which this CPU lacks")
    separate = load(checkpoint_dir, "demo:small", quantization, dtype, fuse=False, native=native)
    fused = load(checkpoint_dir, "demo:small", quantization, dtype, fuse=True, native=native)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, separate.config.hidden_size, generator=generator).to(getattr(torch, dtype))
    with torch.inference_mode():
        for (parent, _, parts), (fused_parent, _, _) in zip(layer_groups(separate), layer_groups(fused), strict=True):
            for part in parts:
                want, got = getattr(parent, part)(x), getattr(fused_parent, part)(x)
                if exact:
                    assert torch.equal(got, want), part
                else:  # bf16 partial sums, added in another order: within bf16 resolution of the output's scale
                    torch.testing.assert_close(got, want, rtol=2**-7, atol=2**-7 * float(want.abs().max()))
        ids = torch.tensor([[5, 17, 300, 42, 9, 77]])
        logits, fused_logits = separate(ids).logits, fused(ids).logits
    if exact:
        assert torch.equal(fused_logits, logits)


@pytest.mark.parametrize(
    ("model", "quantization", "dtype"),
    [("demo:large", "nf4", "bfloat16"), ("demo:small", "nf4", "bfloat16"), ("demo:large", "none", "float32")],
)
def test_greedy_tokens_of_a_fused_model_equal_the_unfused_ones(
    checkpoint_dir: Path, model: str, quantization: str, dtype: str
) -> None:
    """Bit-exact projections give the same logits at every step, so the same tokens even where a random-weight
    model's top two are nearly tied. (bitsandbytes' own CPU kernel rounds partial sums to bf16, in an order that
    depends on the weight's height: there a near-tie can flip, as it can between any two kernels; the worker test
    below runs that kernel on a real model.)"""
    separate = load(checkpoint_dir, model, quantization, dtype, fuse=False, native=False)
    fused = load(checkpoint_dir, model, quantization, dtype, fuse=True, native=False)
    prompts = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [40, 41, 300, 7, 7, 7, 90, 12], [500, 3, 250, 8, 1, 1, 2, 3]])
    with torch.inference_mode():
        kwargs: dict[str, Any] = {"max_new_tokens": 24, "min_new_tokens": 24, "do_sample": False}
        want = separate.generate(prompts, attention_mask=torch.ones_like(prompts), **kwargs)
        got = fused.generate(prompts, attention_mask=torch.ones_like(prompts), **kwargs)
    assert torch.equal(got, want)


class CountingLinear(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x @ self.weight.T


def test_one_matmul_serves_every_part_of_one_input_and_a_new_input_gets_its_own() -> None:
    weight = torch.randn(7, 4)
    linear = CountingLinear(weight)
    fusion = FusedProjection(linear, (3, 2, 2))
    q, k, v = (ProjectionSlice(fusion, i) for i in range(3))
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    parts = [q(x), k(x), v(x)]
    assert linear.calls == 1
    assert all(torch.equal(p, w) for p, w in zip(parts, (x @ weight.T).split((3, 2, 2), -1), strict=True))
    assert fusion._input is None, "no activation is held once every part was handed out"
    assert torch.equal(q(x), parts[0]) and torch.equal(q(x), parts[0])  # a part asked twice: computed again
    assert linear.calls == 3
    assert torch.equal(k(y), (y @ weight.T)[:, 3:5]), "another input is never served from the last one"
    assert torch.equal(v(x), parts[2])
    assert linear.calls == 5


def test_a_fused_model_traces_into_one_compiled_graph(checkpoint_dir: Path) -> None:
    """The runner compiles the decode step (`compile: true`): the parts' hand-over must not break the graph."""
    fused = load(checkpoint_dir, "demo:large", "nf4", "bfloat16", fuse=True)
    ids = torch.tensor([[3, 9, 27, 81]])
    torch._dynamo.reset()
    with torch.inference_mode():
        explained = torch._dynamo.explain(fused)(input_ids=ids, use_cache=False)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        compiled = torch.compile(fused, backend="eager", fullgraph=True)
        want = fused(input_ids=ids, use_cache=False).logits
        assert torch.equal(compiled(input_ids=ids, use_cache=False).logits, want)
    torch._dynamo.reset()


@pytest.mark.slow
def test_the_nf4_worker_answers_the_same_tokens_fused_or_not(start_worker: WorkerFactory) -> None:
    """The shipped large tier (a real model, SmolLM2-135M-Instruct, in NF4) through the whole worker."""
    answers = []
    for fuse in (False, True):
        worker = start_worker("large", fuse_projections=fuse)
        body = {
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
            "temperature": 0,
            "max_tokens": 24,
            "logprobs": True,
        }
        response = httpx.post(f"{worker.url}/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        answers.append((choice["message"]["content"], [t["token"] for t in choice["logprobs"]["content"]]))
    assert answers[0] == answers[1]
    assert "Paris" in answers[1][0]
