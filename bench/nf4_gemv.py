"""An experiment: a decode step's 4-bit matmul at one row, reading bitsandbytes' NF4 weights as stored: a Triton GEMV.

bitsandbytes' own kernel for one row gives each output a warp that walks K in 1,024-weight steps with one 16-byte
load in flight per lane and looks the codes up by warp shuffles; on an H100 it reads a 7B's weights at about
1 TB/s, a third of the card's bandwidth (bench/RESULTS.md). Here a program owns `block_n` outputs and walks its
share of K (`split_k` programs per output, their float32 partial sums added afterwards) one 64-weight quantisation
block at a time, a [block_n, 32] tile of packed bytes per step, software-pipelined by Triton; each code is looked
up in the 16-entry NF4 table (64 bytes, one cache line: one pass per warp-wide lookup), the two nibbles of a byte
interleaved back into K order, multiplied with the input in float32, scaled per block and summed once at the end.
The worker does not use it (bench/RESULTS.md says why).

The weights are bitsandbytes' format, untouched:
- codes: `N*K/2` bytes over the flattened [N, K] weight, two per byte, the even element in the high nibble;
- scales, one per 64 weights: float32 (`absmax`), or double-quantised: 8-bit codes into `state2.code` times one
  float32 per 256 scales (`state2.absmax`) plus `offset`, as its `dequantize_blockwise(absmax, state2) + offset`
  rebuilds them.
The result matches bitsandbytes' dequantize + `F.linear` within bf16 rounding, not bit for bit: weights are not
rounded to bf16 before the multiply, and the sum runs in another order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.nf4_triton import Scales, scale_tensors

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build of torch ships without Triton
    triton = None

QUANT_BLOCK = 64
"""Weights per scale: the bitsandbytes blocksize this kernel reads (its default)."""


def available() -> bool:
    return triton is not None


@dataclass(frozen=True, order=True)
class GemvConfig:
    """One launch configuration: outputs per program, programs along K (their float32 partial sums added after),
    pipeline stages."""

    block_n: int
    split_k: int
    stages: int = 4

    @property
    def warps(self) -> int:
        """One warp per 512 products of a K step (16 a thread), 1 to 8."""
        return max(1, min(8, self.block_n * QUANT_BLOCK // 512))

    def __str__(self) -> str:
        return f"gemv-n{self.block_n}k{self.split_k}s{self.stages}"


def candidates(n: int, k: int) -> list[GemvConfig]:
    """The configurations worth timing for one row times an [n, k] weight: enough programs to fill an H100's 132
    multiprocessors twice, K split only into whole quantisation blocks."""
    blocks = k // QUANT_BLOCK
    found = []
    for block_n in (8, 16, 32, 64):
        for split_k in (1, 2, 4, 8):
            if blocks % split_k == 0 and -(-n // block_n) * split_k >= 264:
                found.append(GemvConfig(block_n, split_k))
    return found


if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]
    def _gemv_kernel(  # type: ignore[no-untyped-def]  # Triton kernels carry no Python types
        x_ptr,
        w_ptr,
        absmax_ptr,
        absmax2_ptr,
        code2_ptr,
        offset_ptr,
        lut_ptr,
        y_ptr,
        N,
        K,
        blocks_per_split,
        NESTED: tl.constexpr,
        BLOCK_N: tl.constexpr,
        STAGES: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        rows = tl.where(row_ok, rows, 0)  # out-of-range rows read row 0 and are not stored
        byte = tl.arange(0, 32)
        weight = tl.arange(0, 64)
        w_rows = w_ptr + rows[:, None].to(tl.int64) * (K // 2) + byte[None, :]
        s_rows = rows.to(tl.int64) * (K // 64)
        if NESTED:
            offset = tl.load(offset_ptr)
        acc = tl.zeros((BLOCK_N, 64), dtype=tl.float32)
        first = pid_k * blocks_per_split
        for block in tl.range(first, first + blocks_per_split, num_stages=STAGES):
            codes = tl.load(w_rows + block * 32)  # [BLOCK_N, 32]: one quantisation block of each row
            high = tl.load(lut_ptr + (codes >> 4).to(tl.int32))  # the even weights
            low = tl.load(lut_ptr + (codes & 15).to(tl.int32))
            w = tl.interleave(high, low)  # [BLOCK_N, 64], in K order
            x = tl.load(x_ptr + block * 64 + weight).to(tl.float32)
            if NESTED:
                index = s_rows + block
                scale = tl.load(code2_ptr + tl.load(absmax_ptr + index).to(tl.int32))
                scale = scale * tl.load(absmax2_ptr + index // 256) + offset
            else:
                scale = tl.load(absmax_ptr + s_rows + block)
            acc += (w * x[None, :]) * scale[:, None]
        tl.store(y_ptr + pid_k * N + rows, tl.sum(acc, axis=1), mask=row_ok)


def gemv(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: Scales,
    lut: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    config: GemvConfig,
) -> torch.Tensor:
    """x [K] (or [1, K]) times the NF4 weight [n, K] -> [n] in x's dtype. `scales`: as `scale_tensors` gives
    them; `lut`: the 16 NF4 values, float32."""
    if triton is None:
        raise RuntimeError("the NF4 GEMV needs Triton")
    x = x.reshape(-1)
    k = x.shape[0]
    partial = torch.empty((config.split_k, n), device=x.device, dtype=torch.float32)
    absmax, absmax2, code2, offset = scales
    nested = absmax2 is not None
    _gemv_kernel[(triton.cdiv(n, config.block_n), config.split_k)](
        x,
        packed,
        absmax,
        absmax2 if nested else absmax,
        code2 if nested else absmax,
        offset if nested else absmax,
        lut,
        partial,
        n,
        k,
        k // QUANT_BLOCK // config.split_k,
        NESTED=nested,
        BLOCK_N=config.block_n,
        STAGES=config.stages,
        num_warps=config.warps,
        num_stages=config.stages,
    )
    total = partial.sum(0) if config.split_k > 1 else partial[0]
    if bias is not None:
        total = total + bias.float()
    return total.to(x.dtype)


def layer_gemv(x: torch.Tensor, layer: Any, config: GemvConfig) -> torch.Tensor:
    """`layer(x)` for one row of input through a bitsandbytes `Linear4bit` in its standard NF4 layout (64-weight
    blocks, double-quantised scales in 256-scale blocks if any)."""
    state = layer.weight.quant_state
    n = int(state.shape[0])
    scales = scale_tensors(state, x.device)
    out = gemv(x, layer.weight.data.view(-1), scales, state.code.float(), layer.bias, n, config)
    return out.reshape(*x.shape[:-1], n)
