"""A static, slot-based KV cache that batches sequences of different lengths without copying per step.

Every layer owns two preallocated buffers `[max_batch, kv_heads, max_len, head_dim]`. Each running
sequence owns one row. Sequences are right-aligned on a shared write column: a decode step writes
every row's new key/value at the same column `t` and attends over the whole width, with a boolean
mask hiding each row's unused left part. A step therefore has the same shapes whatever the lengths,
which is what lets one CUDA graph per batch-size bucket replay it.

The model calls `update()` from each attention layer; the runner sets the mode before each forward.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache


class SlotKVCache(Cache):
    def __init__(
        self,
        *,
        layers: int,
        max_batch: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        super().__init__(layers=[])
        shape = (max_batch, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.max_batch = max_batch
        self.max_len = max_len
        self.column = torch.zeros(1, dtype=torch.long, device=device)
        """The shared write column of a decode step (a tensor, so a captured graph reads it)."""
        self._prefill: tuple[int, int, int, int] | None = None
        self._bucket = 1

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def prefill_mode(self, row: int, start: int, offset: int, length: int) -> None:
        """The next forward writes `length` prompt tokens into `row` at [start+offset, start+offset+length)
        and attends over the whole prompt so far, [start, start+offset+length) (chunked prefill)."""
        self._prefill = (row, start, offset, length)

    def decode_mode(self, bucket: int) -> None:
        """The next forward is one step for rows [0, bucket), writing at `self.column`."""
        self._prefill = None
        self._bucket = bucket

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self._prefill is not None:
            row, start, offset, length = self._prefill
            end = start + offset + length
            keys[row : row + 1, :, start + offset : end].copy_(key_states)
            values[row : row + 1, :, start + offset : end].copy_(value_states)
            return keys[row : row + 1, :, start:end], values[row : row + 1, :, start:end]
        k, v = keys[: self._bucket], values[: self._bucket]
        k.index_copy_(2, self.column, key_states)
        v.index_copy_(2, self.column, value_states)
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # callers always pass position ids; lengths live in the scheduler

    def move_row(self, src: int, dst: int) -> None:
        for buf in (*self.keys, *self.values):
            buf[dst].copy_(buf[src])

    def shift(self, rows: int, by: int) -> None:
        """Move rows [0, rows) `by` columns right (by > 0) or left (by < 0)."""
        if by == 0 or rows == 0:
            return
        width = self.max_len - abs(by)
        for buf in (*self.keys, *self.values):
            view = buf[:rows]
            if by > 0:
                view[:, :, by:] = view[:, :, :width].clone()
            else:
                view[:, :, :width] = view[:, :, -by:].clone()
