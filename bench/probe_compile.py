"""Probe: does torch.compile (inductor, no cudagraph trees) under our own decode-graph capture cut step time?

Builds the Qwen2.5-1.5B-shaped checkpoint (random weights, bf16), then times one captured decode step at
batch 1 over the worker's paged cache (1024-token width): (a) the HF modules as they are, (b) the model
compiled with inductor's default mode. Reports median ms per replay from CUDA events, and how far each one's logits are
from an fp32 reference (the same checkpoint in fp32, eager, same inputs).

    python bench/probe_compile.py [--buckets 1 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.worker_gpu import build  # noqa: E402
from workers.kv_cache import PagedKVCache  # noqa: E402
from workers.loader import attention_shape  # noqa: E402
from workers.runner import ModelRunner  # noqa: E402


def time_replays(runner: ModelRunner, rows: int, n: int = 200) -> float:
    graph, _ = runner._graphs[(runner.bucket_for(rows), runner.widths[-1])]
    for _ in range(10):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(n):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--buckets", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bench-checkpoints-v2"))
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    path = build("qwen2.5-1.5b", args.checkpoints)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    layers, kv_heads, head_dim = attention_shape(model.config)
    results = {}
    logits_by_label = {}
    for label in ("fp32-reference", "eager-modules", "inductor"):
        dtype = torch.float32 if label == "fp32-reference" else torch.bfloat16
        cache = PagedKVCache(
            layers=layers,
            max_batch=max(args.buckets),
            kv_heads=kv_heads,
            max_len=1024,
            head_dim=head_dim,
            dtype=dtype,
            device="cuda",
            num_blocks=max(args.buckets) * 64 + 1,
            block_size=16,
        )
        subject = model.float() if label == "fp32-reference" else model.to(torch.bfloat16)
        graphs = label != "fp32-reference"
        runner = ModelRunner(subject, cache, use_graphs=graphs, compile=label == "inductor")
        runner.buckets = sorted(args.buckets)
        runner.widths = [1024]
        started = time.monotonic()
        try:
            runner.capture_graphs()
        except Exception as exc:  # the probe reports what broke instead of stopping
            print(f"{label}: capture failed: {type(exc).__name__}: {str(exc)[:500]}", flush=True)
            continue
        capture_s = time.monotonic() - started
        for row in range(max(args.buckets)):  # after capture, which wrote the scratch block: these stay zeros
            cache.assign(row, list(range(1 + 64 * row, 1 + 64 * (row + 1))))
        torch.manual_seed(0)
        runner.input_ids.random_(100, 1000)
        runner.positions.fill_(5)
        for rows in sorted(args.buckets) if graphs else []:
            ms = time_replays(runner, rows)
            results[(label, rows)] = ms
            print(
                f"{label:<14} rows {rows:>2}: {ms:.3f} ms/step = {rows * 1000 / ms:.0f} tok/s "
                f"(capture {capture_s:.0f}s)"
            )
        logits_by_label[label] = runner.decode(1, 6)[0].clone()
        del runner, cache
    reference = logits_by_label.pop("fp32-reference")
    for label, logits in logits_by_label.items():
        err = (logits - reference).norm() / reference.norm()
        same = bool((logits.topk(5).indices == reference.topk(5).indices).all())
        print(f"{label}: logits vs fp32, relative L2 {err:.2e}; same top-5 tokens: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
