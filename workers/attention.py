"""Decode attention over grouped KV heads that never repeats them.

transformers' sdpa attention copies each grouped KV head once per query head (`repeat_kv`) whenever a mask is
passed and the kernel cannot take grouped heads itself, which on CUDA is always the case for a masked step. A
decode step of the paged cache always passes a mask (rows hold different lengths), so on a 7B with 28 query heads
over 4 KV heads every step wrote and read the gathered keys and values 7 times over, and the widest captured
step's transient (64 rows x 4,096 slots) took 4.35 GB of graph pool on the H100.

A decode step has one query token per row, so the query heads of one group can stand in for query *positions*:
[rows, heads, 1, dim] becomes [rows, kv_heads, group, dim] and attends over [rows, kv_heads, width, dim] directly
with the row's mask broadcast over them. Same dot products, same softmax per query head, no copy. Steps with more
than one query token (prefill) go to transformers' own sdpa attention unchanged. Where the paged cache's decode
steps are read in place (CUDA with Triton), the cache hands over its pools instead of gathered keys and values, and
workers.paged_attention's kernel reads them through the block table the runner passes along.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from workers import paged_attention

NAME = "tiered_sdpa"
"""The `attn_implementation` the loader asks for (registered with transformers by `register`)."""


def grouped_decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query [batch, heads, q_len, dim], key/value [batch, kv_heads,
    kv_len, dim]; returns [batch, q_len, heads, dim]."""
    groups = int(getattr(module, "num_key_value_groups", 1))
    rows, heads, q_len, dim = query.shape
    if key.dim() == 3:  # the paged cache handed over its pools: a decode step read in place
        assert attention_mask is not None and scaling is not None
        out = paged_attention.decode(
            query[:, :, 0],
            key,
            value,
            kwargs["paged_table"],
            kwargs["paged_positions"],
            scale=scaling,
            width=attention_mask.shape[-1],
            block_size=kwargs["paged_block_size"],
        )
        return out[:, None], None
    if groups == 1 or q_len != 1 or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    # Query head h = k * groups + g reads KV head k (repeat_kv's order): a reshape, no copy.
    grouped = query.reshape(rows, heads // groups, groups, dim)
    mask = attention_mask
    if mask is not None and mask.dim() == 4 and mask.shape[1] != 1:  # a per-head mask: [rows, heads, 1, w]
        mask = mask.reshape(rows, heads // groups, groups, mask.shape[-1])
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.reshape(rows, 1, heads, dim), None


def register() -> str:
    """Make `NAME` a valid `attn_implementation`, with sdpa's mask preparation (a 4-D mask passes through)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, grouped_decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
