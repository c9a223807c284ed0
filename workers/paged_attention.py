"""Decode attention read in place from the paged cache: one Triton kernel per layer instead of gather + sdpa.

The plain decode path (workers.kv_cache, workers.attention) gathers every row's keys and values for the step's
whole width into new tensors, then runs sdpa over them with a mask: a few kernels per layer, and reads and writes
of slots past each row's length. This kernel reads the pools directly: program (row, kv head, split) walks the
row's block table over positions [0, position] only, and the query heads of one KV group share each key and value
tile (one query token per row, so the group stands in for query positions, as in workers.attention). Softmax is
the online kind, in float32; a step whose width is long is split along the positions (flash-decoding), each split
keeping its running max and sum, and a second kernel combines them.

Used on CUDA when Triton is importable (worker setting `decode_attention`); the CPU, and prefill everywhere, keep
the plain path. Results match it within bf16 rounding, not bit for bit: the sum runs in another order.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build of torch ships without Triton: the plain path serves
    triton = None

SPLIT_POSITIONS = 512
"""Positions one program reads, while a step's width needs at most MAX_SPLITS of them; a wider step's splits
read more each."""
MAX_SPLITS = 16
BLOCK_N = 64
"""Positions per tile: four 16-token cache blocks."""


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]
    def _decode_kernel(  # type: ignore[no-untyped-def]  # Triton kernels carry no Python types
        q_ptr,
        k_ptr,
        v_ptr,
        table_ptr,
        pos_ptr,
        out_ptr,
        part_ptr,
        stats_ptr,
        stride_qr,
        stride_qh,
        stride_ks,
        stride_kh,
        stride_tr,
        stride_or,
        stride_oh,
        scale,
        split_len,
        n_splits,
        GROUP: tl.constexpr,
        G_PAD: tl.constexpr,
        DIM: tl.constexpr,
        BS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        kv = tl.program_id(1)
        split = tl.program_id(2)
        length = tl.load(pos_ptr + row) + 1
        lo = split * split_len
        hi = tl.minimum(lo + split_len, length)
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, DIM)
        heads = kv * GROUP + g
        in_group = g < GROUP
        q_offs = row * stride_qr + heads[:, None] * stride_qh + d[None, :]
        q = tl.load(q_ptr + q_offs, mask=in_group[:, None], other=0.0)
        m_i = tl.full([G_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, DIM], tl.float32)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            valid = offs < hi
            block = tl.load(table_ptr + row * stride_tr + offs // BS, mask=valid, other=0)
            slot = block * BS + offs % BS
            kv_offs = slot[:, None] * stride_ks + kv * stride_kh + d[None, :]
            k = tl.load(k_ptr + kv_offs, mask=valid[:, None], other=0.0)
            s = (tl.dot(q, tl.trans(k)) * scale).to(tl.float32)  # inductor passes `scale` as a float64
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + kv_offs, mask=valid[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        if n_splits == 1:
            out = acc / l_i[:, None]
            tl.store(
                out_ptr + row * stride_or + heads[:, None] * stride_oh + d[None, :],
                out.to(out_ptr.dtype.element_ty),
                mask=in_group[:, None],
            )
        else:
            # Partial results [rows, heads, SPLITS, DIM] and (max, sum) [rows, heads, SPLITS, 2], float32; an empty
            # split (past the row's length) leaves max -inf and sum 0, which the combine weighs as nothing.
            n_heads = tl.num_programs(1) * GROUP
            base = (row * n_heads + heads) * n_splits + split
            tl.store(part_ptr + base[:, None] * DIM + d[None, :], acc, mask=in_group[:, None])
            tl.store(stats_ptr + base * 2, m_i, mask=in_group)
            tl.store(stats_ptr + base * 2 + 1, l_i, mask=in_group)

    @triton.jit  # type: ignore[untyped-decorator]
    def _combine_kernel(  # type: ignore[no-untyped-def]
        part_ptr,
        stats_ptr,
        out_ptr,
        stride_or,
        stride_oh,
        n_splits,
        DIM: tl.constexpr,
        S_PAD: tl.constexpr,
    ):
        row = tl.program_id(0)
        head = tl.program_id(1)
        n_heads = tl.num_programs(1)
        s = tl.arange(0, S_PAD)
        d = tl.arange(0, DIM)
        used = s < n_splits
        base = (row * n_heads + head) * n_splits + s
        m = tl.load(stats_ptr + base * 2, mask=used, other=float("-inf"))
        l_s = tl.load(stats_ptr + base * 2 + 1, mask=used, other=0.0)
        top = tl.max(m, 0)
        weight = tl.where(m == float("-inf"), 0.0, tl.exp(m - top))
        acc = tl.load(part_ptr + base[:, None] * DIM + d[None, :], mask=used[:, None], other=0.0)
        out = tl.sum(acc * weight[:, None], 0) / tl.sum(l_s * weight, 0)
        tl.store(out_ptr + row * stride_or + head * stride_oh + d, out.to(out_ptr.dtype.element_ty))


def _decode(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    table: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
    width: int,
    block_size: int,
) -> torch.Tensor:
    rows, heads, dim = query.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    # Sym-aware arithmetic: under torch.compile the width is symbolic (one compilation for all widths of a bucket).
    split_len = torch.sym_max(SPLIT_POSITIONS, -(-width // (MAX_SPLITS * BLOCK_N)) * BLOCK_N)  # type: ignore[no-untyped-call]
    splits = -(-width // split_len)
    out = torch.empty_like(query)
    if splits > 1:
        part = torch.empty((rows, heads, splits, dim), dtype=torch.float32, device=query.device)
        stats = torch.empty((rows, heads, splits, 2), dtype=torch.float32, device=query.device)
    else:  # not touched: the kernel writes the output itself
        part = stats = out
    _decode_kernel[(rows, kv_heads, splits)](
        query,
        keys,
        values,
        table,
        positions,
        out,
        part,
        stats,
        query.stride(0),
        query.stride(1),
        keys.stride(0),
        keys.stride(1),
        table.stride(0),
        out.stride(0),
        out.stride(1),
        scale,
        split_len,
        splits,
        GROUP=group,
        G_PAD=max(16, triton.next_power_of_2(group)),
        DIM=dim,
        BS=block_size,
        BLOCK=BLOCK_N,
    )
    if splits > 1:
        _combine_kernel[(rows, heads)](
            part, stats, out, out.stride(0), out.stride(1), splits, DIM=dim, S_PAD=MAX_SPLITS
        )
    return out


if triton is not None:
    # An opaque custom op: torch.compile calls it rather than tracing into the kernels. Wrapped as `triton_op`
    # instead, the 7B's decode graphs took 406 s to compile cold on the H100; as this op, 187 s, and 59 s on a
    # restart (bench/RESULTS.md).
    _op = torch.library.custom_op("tiered::paged_decode_attention", _decode, mutates_args=())
    _op.register_fake(lambda query, *args: torch.empty_like(query))


def decode(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    table: torch.Tensor,
    positions: torch.Tensor,
    *,
    scale: float,
    width: int,
    block_size: int,
) -> torch.Tensor:
    """Attention of one query token per row over that row's positions [0, position], read from the pools.

    query [rows, heads, dim]; keys/values: the layer's pools [slots, kv_heads, dim]; table [>= rows, blocks]:
    each row's block ids; positions [>= rows, 1]: each row's newest position (its key/value already written);
    width: the step's static width (every row's position < width). Returns [rows, heads, dim]."""
    if triton is None:
        raise RuntimeError("paged decode attention needs Triton")
    rows = query.shape[0]
    result: torch.Tensor = _op(query, keys, values, table[:rows], positions[:rows], scale, width, block_size)
    return result
