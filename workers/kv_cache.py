"""A paged KV cache: fixed-size blocks handed out through a block table, read by static-shape decode steps.

Every layer owns one pool of key slots and one of value slots, `[num_blocks * block_size, kv_heads,
head_dim]`. A sequence owns whole blocks (a list of block ids, `BlockAllocator`); the device-side block
table `[max_batch, blocks_per_seq]` maps each batch row's token position p to the slot
`table[row, p // block_size] * block_size + p % block_size`. A 300-token chat thus holds about 300
tokens of memory instead of a whole `max_seq_len` row, and rows leaving the batch move a table row,
never KV data.

Decode steps keep static shapes, as CUDA graphs need (as vLLM does): every step of a (batch bucket,
width) pair reads the same buffers. Each row writes its new key/value at the slot of its own position
and attends over the slots of positions [0, width), gathered through the table, with a mask
`position >= p` built on the device from the runner's static `positions`. Block 0 is never handed out:
it is the scratch block that rows beyond the live ones (a bucket is padded up) and table entries past a
sequence's own blocks point at, so a padded step writes and reads only memory nobody owns.

Prefill packs several prompts' chunks into one sequence (batch 1) and takes their slots from the block lists
on the host, so a sequence being prefilled needs no block-table row until it decodes.

The model calls `update()` from each attention layer; the runner sets the mode before each forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache

SCRATCH_BLOCK = 0

PrefillSpan = tuple[Sequence[int], int, int]
"""One sequence's part of a packed prefill: (its blocks in position order, offset, length)."""


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks that hold `tokens` tokens (rounded up)."""
    return -(-tokens // block_size)


class BlockAllocator:
    """The host-side free list of block ids. Used from the engine thread only."""

    def __init__(self, num_blocks: int) -> None:
        self.total = num_blocks - 1
        """Blocks a sequence may own: all but the scratch block."""
        self._free = list(range(num_blocks - 1, SCRATCH_BLOCK, -1))

    @property
    def free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise MemoryError(f"{n} blocks wanted, {len(self._free)} free")
        taken = self._free[-n:] if n else []
        del self._free[len(self._free) - n :]
        return taken

    def release(self, blocks: list[int]) -> None:
        self._free.extend(blocks)


class PagedKVCache(Cache):
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
        num_blocks: int,
        block_size: int = 16,
    ) -> None:
        super().__init__(layers=[])
        if num_blocks < 2:
            raise ValueError("a paged cache needs the scratch block and at least one more")
        slots = num_blocks * block_size
        # Zeros, not empty: a masked-out slot's value still meets a zero attention weight, and 0 x NaN is NaN.
        shape = (slots, kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.max_batch = max_batch
        self.max_len = max_len
        """The longest sequence one row holds (prompt and generation): a per-request limit, not a row's memory."""
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.blocks_per_seq = blocks_for(max_len, block_size)
        self.device = torch.device(device)
        self.table = torch.full((max_batch, self.blocks_per_seq), SCRATCH_BLOCK, dtype=torch.long, device=device)
        self.allocator = BlockAllocator(num_blocks)
        self._offsets = torch.arange(block_size, device=device)
        self._write = torch.zeros(0, dtype=torch.long, device=device)
        """Slots the next forward writes, one per new token."""
        self._read = torch.zeros((0, 0), dtype=torch.long, device=device)
        """Slots the next forward attends over, [rows, width]."""
        self.read_in_place = False
        """Decode steps hand the attention the pools themselves (workers.paged_attention reads each row's blocks
        through the table) instead of gathering their slots; set by the runner where that kernel serves."""
        self._decoding = False

    @property
    def read_slots(self) -> torch.Tensor:
        """The slots the next forward attends over, [rows, width] (its width is what varies between decode shapes)."""
        return self._read

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @property
    def block_bytes(self) -> int:
        return self.nbytes // self.num_blocks

    # --- block table (host side, between steps) --------------------------------------------------------

    def assign(self, row: int, blocks: list[int]) -> None:
        """Give `row` these blocks, in position order (a host-to-device copy: call it between steps)."""
        self.table[row].fill_(SCRATCH_BLOCK)
        if blocks:
            self.table[row, : len(blocks)].copy_(torch.tensor(blocks, dtype=torch.long))

    def move_row(self, src: int, dst: int) -> None:
        """Row `src`'s sequence becomes row `dst`'s; `src` points at the scratch block again."""
        self.table[dst].copy_(self.table[src])
        self.table[src].fill_(SCRATCH_BLOCK)

    def clear_row(self, row: int) -> None:
        self.table[row].fill_(SCRATCH_BLOCK)

    # --- modes (set by the runner before each forward) -------------------------------------------------

    def _slots(self, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The slot of each (row, position): both broadcast together; computed on the device."""
        blocks = self.table[rows, torch.div(positions, self.block_size, rounding_mode="floor")]
        return blocks * self.block_size + positions % self.block_size

    def prefill_mode(self, parts: Sequence[PrefillSpan]) -> tuple[torch.Tensor, torch.Tensor]:
        """The next forward prefills several sequences packed into one (batch 1, chunked prefill): part i is
        `length` prompt tokens of the sequence owning `blocks`, at positions [offset, offset+length). It writes
        their slots and attends, per part, over that sequence's positions [0, offset+length): the slots read are
        the parts' spans one after another, so earlier chunks already in the cache are read back too.

        Returns (position ids [1, tokens], attention mask [1, 1, tokens, read]): block-diagonal and causal, a token
        sees only its own sequence's positions up to its own. Slots come from the block lists on the host (one
        copy to the device), so a sequence being prefilled needs no block-table row yet."""
        spans = [offset + length for _, offset, length in parts]
        seen = torch.cat([torch.arange(span) for span in spans])
        part = torch.repeat_interleave(torch.arange(len(parts)), torch.tensor(spans))
        owned = torch.cat([torch.tensor(list(blocks), dtype=torch.long) for blocks, _, _ in parts])
        first_block = torch.tensor([0, *(len(blocks) for blocks, _, _ in parts[:-1])]).cumsum(0)
        block = owned[first_block[part] + torch.div(seen, self.block_size, rounding_mode="floor")]
        read = block * self.block_size + seen % self.block_size
        new = seen >= torch.tensor([offset for _, offset, _ in parts])[part]
        tokens, width = int(new.sum()), len(seen)
        # One host-to-device copy: read positions and owners, the slots read, then new tokens' slots/positions/owners.
        host = torch.cat([seen, part, read, read[new], seen[new], part[new]]).to(self.device)
        seen, part, read, write, positions, owner = torch.split(host, [width] * 3 + [tokens] * 3)
        self._write = write
        self._read = read[None]
        self._decoding = False
        mask = (owner[:, None] == part[None, :]) & (seen[None, :] <= positions[:, None])
        return positions[None], mask[None, None]

    def decode_mode(self, positions: torch.Tensor, width: int) -> torch.Tensor:
        """The next forward is one step for rows [0, len(positions)), each at its own position (`positions`,
        [rows, 1], on the device): it writes that position's slot and attends over positions [0, width).
        Returns the attention mask, [rows, 1, 1, width]. Only device operations, so a graph captures them."""
        rows = positions.shape[0]
        index = torch.arange(rows, device=self.device)[:, None]
        self._write = self._slots(index, positions).view(rows)
        span = torch.arange(width, device=self.device)[None, :]
        self._decoding = True
        if not self.read_in_place:
            self._read = self._slots(index, span)
        return (span <= positions).view(rows, 1, 1, width)

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values ([rows, kv_heads, tokens, head_dim]) and return those to attend over,
        [rows, kv_heads, width, head_dim], gathered from the pool; or, for a decode step read in place, the pools
        themselves, [slots, kv_heads, head_dim] (workers.attention tells them apart by their rank)."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        # A packed prefill's new tokens are its parts' in order; a decode step's are one per row: one per slot.
        keys.index_copy_(0, self._write, key_states.transpose(1, 2).reshape(-1, *keys.shape[1:]))
        values.index_copy_(0, self._write, value_states.transpose(1, 2).reshape(-1, *values.shape[1:]))
        if self._decoding and self.read_in_place:
            return keys, values
        return keys[self._read].transpose(1, 2), values[self._read].transpose(1, 2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # callers always pass position ids; lengths live in the scheduler
