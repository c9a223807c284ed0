"""Runs the model: packed prefill forwards, and batched decode steps eagerly or from captured CUDA graphs.

The decode step's inputs live in static buffers (token ids, positions) and the cache's block table; a
CUDA graph per (batch bucket, width bucket) is captured over them once at start-up and replayed each
step. The slots each row writes and reads, and its attention mask, are computed inside the graph from
those buffers, so nothing about a step's lengths needs a new graph. Plain eager decoding is bound by CPU
launch overhead; replaying a graph is not.

The width is how many positions a step attends over: the smallest width bucket holding the longest live
sequence, so a batch of short chats reads a few hundred slots per row, not `max_seq_len`.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.kv_cache import PagedKVCache

log = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, ... up to and including `max_batch`."""
    buckets, b = [], 1
    while b < max_batch:
        buckets.append(b)
        b *= 2
    buckets.append(max_batch)
    return buckets


def width_buckets(max_len: int, block_size: int, smallest: int = 256) -> list[int]:
    """smallest, 2 x smallest, ... below `max_len`, then `max_len`; all rounded up to whole blocks. Doubling keeps
    the graph count logarithmic while a step never reads more than twice the slots it needs."""
    top = -(-max_len // block_size) * block_size
    widths, w = [], max(block_size, -(-smallest // block_size) * block_size)
    while w < top:
        widths.append(w)
        w *= 2
    widths.append(top)
    return widths


def cache_kwarg(model: Any) -> str:
    """The keyword a model's forward takes its KV cache by: `cache` from transformers 5.2x on, where
    `past_key_values` is deprecated (removed in 5.40); `past_key_values` before that."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass(frozen=True)
class PrefillPart:
    """One prompt's chunk in a packed prefill forward."""

    blocks: Sequence[int]
    """The cache blocks its sequence owns, in position order."""
    tokens: Sequence[int]
    """The chunk: prompt tokens at positions [offset, offset + len(tokens))."""
    offset: int
    logits: bool
    """The chunk ends its prompt: the forward returns its last position's logits (its first token's)."""


@dataclass
class GraphStats:
    buckets: list[int]
    pool_bytes: int
    capture_seconds: float
    widths: list[int] = field(default_factory=list)


class ModelRunner:
    def __init__(
        self,
        model: Any,
        cache: PagedKVCache,
        *,
        use_graphs: bool,
        prefill_chunk: int = 512,
        prefill_chunk_idle: int | None = None,
        compile: bool = False,
        smallest_width: int = 256,
        read_in_place: bool = False,
    ) -> None:
        self.prefill_chunk = prefill_chunk
        self.prefill_chunk_idle = max(prefill_chunk, prefill_chunk_idle or prefill_chunk)
        """Tokens a forward may take while nothing decodes (workers.engine)."""
        self.model = model
        # Decode steps have static shapes per bucket, so inductor can fuse them (norms, rotary, activations)
        # into far fewer kernels; prefill stays on the plain modules (its shapes vary).
        self.decode_model = torch.compile(model, dynamic=False) if compile else model
        self.cache = cache
        device = cache.device
        self.device = device
        batch = cache.max_batch
        self.input_ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.buckets = batch_buckets(batch)
        self.widths = width_buckets(cache.max_len, cache.block_size, smallest_width)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.use_graphs = use_graphs and device.type == "cuda"
        self.padded = self.use_graphs or compile
        self.compiled = compile
        """Decode steps run at bucket sizes (rows padded up), so graphs and compiled code see few shapes."""
        if compile:
            _allow_recompiles(len(self.buckets) * len(self.widths))
        self.graph_stats: GraphStats | None = None
        self._cache_kwarg = cache_kwarg(model)
        cache.read_in_place = read_in_place

    @property
    def read_in_place(self) -> bool:
        """Decode steps attend through workers.paged_attention's kernel, reading the pools in place (the cache's
        setting: it hands the attention its pools)."""
        return self.cache.read_in_place

    @torch.inference_mode()
    def prefill(self, parts: Sequence[PrefillPart]) -> torch.Tensor:
        """One forward over several prompts' chunks packed into one sequence (batch 1): writes their keys/values
        into each one's blocks and returns the last-position logits of the parts that ask, in order, [n, vocab].

        The engine keeps the parts' tokens within `prefill_chunk` in all (`prefill_chunk_idle` while nothing
        decodes), so the activations of one forward stay those of one chunk however long the prompts are; a long
        prompt goes through in several forwards.
        """
        ids = torch.tensor([[token for part in parts for token in part.tokens]], dtype=torch.long)
        ends = torch.tensor([len(part.tokens) for part in parts]).cumsum(0) - 1
        keep = ends[torch.tensor([part.logits for part in parts], dtype=torch.bool)]
        positions, mask = self.cache.prefill_mode([(part.blocks, part.offset, len(part.tokens)) for part in parts])
        out = self.model(
            input_ids=ids.to(self.device),
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            # A 1-D tensor of positions: transformers slices the hidden states with it before the head (4.50 through
            # 5.2x alike), so a 512-token forward projects only the few last positions onto the vocabulary.
            logits_to_keep=keep.to(self.device),
            **{self._cache_kwarg: self.cache},
        )
        logits: torch.Tensor = out.logits[0].float()
        return logits

    def bucket_for(self, rows: int) -> int:
        return next(b for b in self.buckets if b >= rows)

    def width_for(self, tokens: int) -> int:
        """The width bucket a step needs when its longest row holds `tokens` positions (the new one included)."""
        return next(w for w in self.widths if w >= tokens)

    @torch.inference_mode()
    def decode(self, rows: int, tokens: int) -> torch.Tensor:
        """One step for rows [0, rows), whose longest holds `tokens` positions after it: inputs already in the
        static buffers; returns logits [rows, vocab]."""
        width = self.width_for(tokens)
        if self.use_graphs:
            graph, logits = self._graphs[(self.bucket_for(rows), width)]
            graph.replay()
            return logits[:rows].float()
        return self._forward(self.bucket_for(rows) if self.padded else rows, width)[:rows].float()

    def _forward(self, bucket: int, width: int) -> torch.Tensor:
        mask = self.cache.decode_mode(self.positions[:bucket], width)
        if self.compiled:
            # The width varies only the gathered slots and the mask: compiled once per batch bucket with a symbolic
            # width (measured on the CPU: buckets + 1 compilations instead of buckets x widths), graphs per width.
            torch._dynamo.maybe_mark_dynamic(mask, 3)
            if not self.read_in_place:
                torch._dynamo.maybe_mark_dynamic(self.cache.read_slots, 1)
        paged: dict[str, Any] = {}
        if self.read_in_place:  # what workers.attention hands workers.paged_attention's kernel
            paged = {
                "paged_table": self.cache.table[:bucket],
                "paged_positions": self.positions[:bucket],
                "paged_block_size": self.cache.block_size,
            }
        out = self.decode_model(
            input_ids=self.input_ids[:bucket],
            position_ids=self.positions[:bucket],
            attention_mask=mask,
            use_cache=True,
            **{self._cache_kwarg: self.cache},
            **paged,
        )
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    @torch.inference_mode()
    def capture_graphs(self) -> GraphStats:
        """Capture one decode graph per (batch bucket, width bucket), sharing one memory pool; measure the cost."""
        if not self.use_graphs:
            self.graph_stats = GraphStats([], 0, 0.0)
            return self.graph_stats
        started = time.monotonic()
        torch.cuda.synchronize()
        before = torch.cuda.memory_reserved(self.device)
        # Capture runs with every row on the scratch block (no sequence is assigned yet) at position 0.
        self.positions.zero_()
        shapes = [(b, w) for b in self.buckets for w in self.widths]
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for bucket, width in shapes:
                for _ in range(2):
                    self._forward(bucket, width)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        # Largest first (most rows x widest), so smaller graphs reuse its pool blocks.
        for bucket, width in sorted(shapes, key=lambda s: (s[0] * s[1], s), reverse=True):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self._forward(bucket, width)
            self._graphs[(bucket, width)] = (graph, logits)
        torch.cuda.synchronize()
        pool_bytes = torch.cuda.memory_reserved(self.device) - before
        self.graph_stats = GraphStats(list(self.buckets), pool_bytes, time.monotonic() - started, list(self.widths))
        log.info(
            "captured %d decode graphs (buckets %s x widths %s) in %.1fs: %.1f MB",
            len(shapes),
            self.buckets,
            self.widths,
            self.graph_stats.capture_seconds,
            pool_bytes / 1e6,
        )
        return self.graph_stats


def _allow_recompiles(shapes: int) -> None:
    """torch.compile with static shapes compiles once per decode shape; dynamo stops at a small limit (then falls
    back to eager for the rest), so raise it to the number of shapes this runner uses."""
    config: Any = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(int(getattr(config, name)), shapes + 8))
