"""An experiment: a Triton matmul that reads bitsandbytes' NF4 weights as stored (packed codes, double-quantised
scales), timed against bitsandbytes' own paths by bench/nf4_matmul.py. The worker does not use it: on the H100 it
was slower than bitsandbytes' fused kernel at 1, 2 and 16 rows (bench/RESULTS.md, "A Triton NF4 kernel").

`y = x @ W.T (+ bias)` for a 4-bit `Linear4bit` weight `W` of shape [N, K]:
- codes: `N*K/2` bytes over the flattened [N, K] weight, two per byte, the even element in the high nibble;
- scales: one per 64 weights, either float32 (`absmax`) or, double-quantised, 8-bit codes into `state2.code`
  times one float32 per 256 scales (`state2.absmax`) plus `offset`, as bitsandbytes'
  `dequantize_blockwise(absmax, state2) + offset` reconstructs them.

Each program owns `block_n` output columns and `block_m` rows and walks K one quantisation block (64 weights,
32 bytes per column) at a time. A byte's two NF4 values come from one 8-byte table load, are scaled in float32 and
rounded to bf16 (the values bitsandbytes' dequantisation writes), then multiplied with the even and odd input
elements separately, so the nibbles never need interleaving. Rows are multiplied on the tensor cores (`tl.dot`,
16 rows or more) or as multiply-adds summed over K at the end. `split_k` > 1 gives each of that many programs a
slice of K and adds their float32 partial sums afterwards in a fixed order.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import torch

QUANT_BLOCK = 64
"""Weights per scale: bitsandbytes' 4-bit blocksize this kernel reads (its default)."""


@dataclass(frozen=True, order=True)
class TritonConfig:
    """One launch configuration; `block_m` is the rows per program (a power of two, >= 16 with `dot`)."""

    block_n: int
    groups: int
    warps: int
    split_k: int = 1
    dot: bool = False

    def __str__(self) -> str:
        kind = "dot" if self.dot else "fma"
        return f"triton-{kind}-n{self.block_n}g{self.groups}w{self.warps}" + (
            f"k{self.split_k}" if self.split_k > 1 else ""
        )


@functools.cache
def available() -> bool:
    """Triton importable and a CUDA device present (or Triton's CPU interpreter switched on)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or _interpreting()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def block_m(rows: int, config: TritonConfig) -> int:
    """Rows per program: all rows in one program (up to 64), at least 16 for the tensor-core path."""
    size = 1 << max(0, rows - 1).bit_length()
    return max(16, size) if config.dot else size


def candidates(rows: int, n: int, k: int) -> list[TritonConfig]:
    """The configurations worth timing for `rows` x [n, k]: a handful, so start-up measurement stays short."""
    blocks = k // QUANT_BLOCK
    found: list[TritonConfig] = []
    if rows <= 8:
        for block_n, warps in ((8, 1), (16, 2), (32, 4)):
            for split_k in (1, 2, 4, 8):
                if blocks % (2 * split_k) == 0 and (split_k == 1 or n <= 8192):
                    found.append(TritonConfig(block_n, 2, warps, split_k=split_k))
    if rows >= 4:
        for block_n in (32, 64):
            found.append(TritonConfig(block_n, 2, 4, dot=True))
        if blocks % 8 == 0 and n <= 8192:
            found.append(TritonConfig(32, 2, 4, split_k=4, dot=True))
    return [c for c in found if block_m(rows, c) <= 64]


def matmul(x: torch.Tensor, layer: Any, config: TritonConfig) -> torch.Tensor:
    """`layer(x)` for a 4-bit `layer` that `supports` accepts, by this kernel (x: [..., K] in the compute dtype)."""
    state = layer.weight.quant_state
    n, k = int(state.shape[0]), int(state.shape[1])
    rows = x.reshape(-1, k)
    bias = layer.bias
    absmax, absmax2, code2, offset = scale_tensors(state, x.device)
    out = nf4_matmul(
        rows, layer.weight.data.view(-1), absmax, absmax2, code2, offset, state.code, bias, n,
        config.block_n, config.groups, config.warps, config.split_k, config.dot,
    )  # fmt: skip
    return out.reshape(*x.shape[:-1], n)


Scales = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]
"""absmax, then for double-quantised scales state2's absmax, state2's code and the offset (else three Nones)."""


def scale_tensors(state: Any, device: torch.device) -> Scales:
    """A bitsandbytes 4-bit quant state's scales as the kernels read them (the offset as a float32 tensor)."""
    if not state.nested:
        return state.absmax, None, None, None
    offset = state.offset
    if not isinstance(offset, torch.Tensor):
        offset = torch.tensor(float(offset), device=device, dtype=torch.float32)
    return state.absmax, state.state2.absmax, state.state2.code, offset


def nf4_matmul(
    x: torch.Tensor,
    packed: torch.Tensor,
    absmax: torch.Tensor,
    absmax2: torch.Tensor | None,
    code2: torch.Tensor | None,
    offset: torch.Tensor | None,
    code: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    block_n: int,
    groups: int,
    warps: int,
    split_k: int,
    dot: bool,
) -> torch.Tensor:
    """[M, K] x NF4 [n, K] -> [M, n]."""
    import triton

    m, k = x.shape
    x = x.contiguous()
    config = TritonConfig(block_n, groups, warps, split_k, dot)
    rows_per_program = block_m(m, config)
    nested = absmax2 is not None
    blocks = k // QUANT_BLOCK
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, rows_per_program), split_k)
    partial = split_k > 1
    y = torch.empty(
        (split_k, m, n) if partial else (m, n), device=x.device, dtype=torch.float32 if partial else x.dtype
    )
    _kernel()[grid](
        x, packed, absmax,
        absmax2 if nested else absmax, code2 if nested else absmax, offset if nested else absmax,
        nibble_pairs(code), bias if bias is not None and not partial else x, y,
        m, n, k, blocks // split_k, x.stride(0),
        BLOCK_M=rows_per_program, BLOCK_N=block_n, GROUPS=groups, NESTED=nested,
        HAS_BIAS=bias is not None and not partial, USE_DOT=dot, DOT_F32=_interpreting(), num_warps=warps,
    )  # fmt: skip
    if not partial:
        return y
    summed = y.sum(0)
    if bias is not None:
        summed += bias.float()
    return summed.to(x.dtype)


_PAIRS: dict[tuple[torch.device, int], torch.Tensor] = {}


def nibble_pairs(code: torch.Tensor) -> torch.Tensor:
    """The NF4 values of both nibbles of every byte as one int64 each (high nibble's float32 bits on top), so the
    kernel looks a byte up once. Built on the code's device from its values (no host copy: safe while a CUDA
    graph captures), once per code tensor."""
    key = (code.device, code.data_ptr())
    pairs = _PAIRS.get(key)
    if pairs is None:
        bits = code.float().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        byte = torch.arange(256, device=code.device)
        pairs = _PAIRS[key] = (bits[byte >> 4] << 32) | bits[byte & 15]
    return pairs


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, defined on first use (Triton is imported only where it exists)."""
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[misc]
    def nf4_matmul_kernel(
        x_ptr, w_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, pairs_ptr, bias_ptr, y_ptr,
        M, N, K, blocks_per_split, stride_xm,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, NESTED: tl.constexpr,
        HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, DOT_F32: tl.constexpr,
    ):  # fmt: skip
        HALF: tl.constexpr = 32  # bytes of codes per quantisation block of one column
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_k = tl.program_id(2)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_b = tl.arange(0, HALF)
        n_mask = offs_n < N
        m_mask = offs_m < M
        blocks_per_row = K // 64
        column_block = offs_n.to(tl.int64) * blocks_per_row
        w_rows = w_ptr + offs_n[:, None].to(tl.int64) * (K // 2) + offs_b[None, :]
        x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + 2 * offs_b[None, :]
        if NESTED:
            offset = tl.load(offset_ptr)
        if USE_DOT:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:  # products summed over K only at the end: no cross-thread reduction inside the loop
            acc3 = tl.zeros((BLOCK_M, BLOCK_N, HALF), dtype=tl.float32)
        first = pid_k * blocks_per_split
        for start in range(first, first + blocks_per_split, GROUPS):
            for g in tl.static_range(GROUPS):
                b = start + g
                packed = tl.load(w_rows + b * HALF, mask=n_mask[:, None], other=0)
                pair = tl.load(pairs_ptr + packed.to(tl.int32))  # both nibbles' NF4 values, one 8-byte load
                hi = (pair >> 32).to(tl.int32).to(tl.float32, bitcast=True)
                lo = pair.to(tl.int32).to(tl.float32, bitcast=True)
                blk = column_block + b
                if NESTED:
                    a8 = tl.load(absmax_ptr + blk, mask=n_mask, other=0).to(tl.int32)
                    second = tl.load(absmax2_ptr + blk // 256, mask=n_mask, other=0.0)
                    scale = tl.load(code2_ptr + a8) * second + offset
                else:
                    scale = tl.load(absmax_ptr + blk, mask=n_mask, other=0.0)
                w_hi = (hi * scale[:, None]).to(tl.bfloat16)
                w_lo = (lo * scale[:, None]).to(tl.bfloat16)
                x_even = tl.load(x_rows + b * 64, mask=m_mask[:, None], other=0.0).to(tl.bfloat16)
                x_odd = tl.load(x_rows + b * 64 + 1, mask=m_mask[:, None], other=0.0).to(tl.bfloat16)
                if USE_DOT and DOT_F32:  # Triton's CPU interpreter (tests) multiplies bf16 dots wrongly
                    acc += tl.dot(x_even.to(tl.float32), tl.trans(w_hi.to(tl.float32)))
                    acc += tl.dot(x_odd.to(tl.float32), tl.trans(w_lo.to(tl.float32)))
                elif USE_DOT:
                    acc += tl.dot(x_even, tl.trans(w_hi))
                    acc += tl.dot(x_odd, tl.trans(w_lo))
                else:
                    acc3 += x_even.to(tl.float32)[:, None, :] * w_hi.to(tl.float32)[None, :, :]
                    acc3 += x_odd.to(tl.float32)[:, None, :] * w_lo.to(tl.float32)[None, :, :]
        if not USE_DOT:
            acc = tl.sum(acc3, axis=2)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        out = y_ptr + pid_k.to(tl.int64) * M * N + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])

    return nf4_matmul_kernel
