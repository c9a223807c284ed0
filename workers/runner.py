"""Runs the model: one prompt's prefill, and batched decode steps eagerly or from captured CUDA graphs.

The decode step's inputs live in static buffers (token ids, positions, the attention mask, the
write column); a CUDA graph per batch-size bucket is captured over them once at start-up and
replayed each step. Plain eager decoding is bound by CPU launch overhead; replaying a graph is not.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from workers.kv_cache import SlotKVCache

log = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, ... up to and including `max_batch`."""
    buckets, b = [], 1
    while b < max_batch:
        buckets.append(b)
        b *= 2
    buckets.append(max_batch)
    return buckets


def cache_kwarg(model: Any) -> str:
    """The keyword a model's forward takes its KV cache by: `cache` from transformers 5.2x on, where
    `past_key_values` is deprecated (removed in 5.40); `past_key_values` before that."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class GraphStats:
    buckets: list[int]
    pool_bytes: int
    capture_seconds: float


class ModelRunner:
    def __init__(
        self, model: Any, cache: SlotKVCache, *, use_graphs: bool, prefill_chunk: int = 512, compile: bool = False
    ) -> None:
        self.prefill_chunk = prefill_chunk
        self.model = model
        # Decode steps have static shapes per bucket, so inductor can fuse them (norms, rotary, activations)
        # into far fewer kernels; prefill stays on the plain modules (its shapes vary).
        self.decode_model = torch.compile(model, dynamic=False) if compile else model
        self.cache = cache
        device = cache.column.device
        self.device = device
        batch, width = cache.max_batch, cache.max_len
        self.input_ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.mask = torch.zeros((batch, 1, 1, width), dtype=torch.bool, device=device)
        self.buckets = batch_buckets(batch)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.use_graphs = use_graphs and device.type == "cuda"
        self.padded = self.use_graphs or compile
        """Decode steps run at bucket sizes (rows padded up), so graphs and compiled code see few shapes."""
        self.graph_stats: GraphStats | None = None
        self._cache_kwarg = cache_kwarg(model)

    @torch.inference_mode()
    def prefill(self, row: int, start: int, prompt: list[int]) -> torch.Tensor:
        """Write the prompt's keys/values into `row` at [start, start+len) and return last-position logits.

        Long prompts go through in chunks of `prefill_chunk` tokens, each attending to all before it, so the
        activations a 4k-token prompt needs stay those of one chunk.
        """
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        logits = None
        for offset in range(0, len(prompt), self.prefill_chunk):
            length = min(self.prefill_chunk, len(prompt) - offset)
            positions = torch.arange(offset, offset + length, device=self.device).unsqueeze(0)
            seen = torch.arange(offset + length, device=self.device)
            causal = (seen[None, :] <= positions[0, :, None])[None, None]
            self.cache.prefill_mode(row, start, offset, length)
            out = self.model(
                input_ids=ids[:, offset : offset + length],
                position_ids=positions,
                attention_mask=causal,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kwarg: self.cache},
            )
            logits = out.logits
        assert logits is not None, "empty prompt"
        last: torch.Tensor = logits[0, -1].float()
        return last

    def bucket_for(self, rows: int) -> int:
        return next(b for b in self.buckets if b >= rows)

    @torch.inference_mode()
    def decode(self, rows: int) -> torch.Tensor:
        """One step for rows [0, rows): inputs already in the static buffers; returns logits [rows, vocab]."""
        if self.use_graphs:
            graph, logits = self._graphs[self.bucket_for(rows)]
            graph.replay()
            return logits[:rows].float()
        return self._forward(self.bucket_for(rows) if self.padded else rows)[:rows].float()

    def _forward(self, bucket: int) -> torch.Tensor:
        self.cache.decode_mode(bucket)
        out = self.decode_model(
            input_ids=self.input_ids[:bucket],
            position_ids=self.positions[:bucket],
            attention_mask=self.mask[:bucket],
            use_cache=True,
            **{self._cache_kwarg: self.cache},
        )
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    @torch.inference_mode()
    def capture_graphs(self) -> GraphStats:
        """Capture one decode graph per bucket, sharing one memory pool; measure what they cost."""
        if not self.use_graphs:
            self.graph_stats = GraphStats([], 0, 0.0)
            return self.graph_stats
        started = time.monotonic()
        torch.cuda.synchronize()
        before = torch.cuda.memory_reserved(self.device)
        # Capture writes garbage at the last column of every row; nothing lives there before serving.
        self.cache.column.fill_(self.cache.max_len - 1)
        self.mask[:, :, :, -1] = True
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for bucket in self.buckets:
                for _ in range(2):
                    self._forward(bucket)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        for bucket in reversed(self.buckets):  # largest first, so smaller graphs reuse its pool blocks
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self._forward(bucket)
            self._graphs[bucket] = (graph, logits)
        torch.cuda.synchronize()
        self.mask.zero_()
        self.cache.column.zero_()
        pool_bytes = torch.cuda.memory_reserved(self.device) - before
        self.graph_stats = GraphStats(list(self.buckets), pool_bytes, time.monotonic() - started)
        log.info(
            "captured %d decode graphs (buckets %s) in %.1fs: %.1f MB",
            len(self.buckets),
            self.buckets,
            self.graph_stats.capture_seconds,
            pool_bytes / 1e6,
        )
        return self.graph_stats
