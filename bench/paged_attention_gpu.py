"""Decode attention over the paged cache on a GPU: gather + sdpa (the plain path) vs the in-place Triton kernel.

    python bench/paged_attention_gpu.py            # on a GPU host with Triton

For the attention shapes of Qwen2.5-1.5B (12 query heads over 2 KV heads) and Qwen2.5-7B (28 over 4), head dim
128, bf16, 16-token blocks scattered through the pool, at 1/16/64 rows and step widths 256/1024/4096 (each row's
length drawn between half the width and the width): one layer's decode attention, each path captured in a CUDA
graph and replayed, in microseconds, with the per-step figure for 28 layers; and each path's largest difference from
a float32 reference. The plain path is what workers.kv_cache + workers.attention run: slots from the block table,
keys and values gathered for the whole width, grouped-head sdpa with the length mask.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers import paged_attention  # noqa: E402
from workers.attention import grouped_decode_attention  # noqa: E402

BLOCK = 16


class Heads(torch.nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups


def case(heads: int, kv_heads: int, rows: int, width: int, dim: int = 128) -> dict[str, float]:
    generator = torch.Generator().manual_seed(rows * 7919 + width)
    lengths = torch.randint(width // 2, width + 1, (rows,), generator=generator)
    per_row = width // BLOCK
    blocks = rows * per_row + 1
    pool = (blocks * BLOCK, kv_heads, dim)
    keys = torch.randn(pool, dtype=torch.bfloat16, device="cuda")
    values = torch.randn(pool, dtype=torch.bfloat16, device="cuda")
    table = (torch.randperm(blocks - 1, generator=generator)[: rows * per_row] + 1).view(rows, per_row).cuda()
    positions = (lengths - 1).view(rows, 1).cuda()
    query = torch.randn(rows, heads, 1, dim, dtype=torch.bfloat16, device="cuda")
    scale = dim**-0.5
    span = torch.arange(width, device="cuda")[None, :]

    def gathered() -> torch.Tensor:
        index = torch.arange(rows, device="cuda")[:, None]
        slots = table[index, span // BLOCK] * BLOCK + span % BLOCK
        mask = (span <= positions).view(rows, 1, 1, width)
        k, v = keys[slots].transpose(1, 2), values[slots].transpose(1, 2)
        out, _ = grouped_decode_attention(Heads(heads // kv_heads), query, k, v, mask, scaling=scale)
        return out[:, 0]

    def in_place() -> torch.Tensor:
        return paged_attention.decode(
            query[:, :, 0], keys, values, table, positions, scale=scale, width=width, block_size=BLOCK
        )

    reference = torch.empty(rows, heads, dim, device="cuda")
    for r in range(rows):
        n = int(lengths[r])
        slots = table[r, torch.arange(n, device="cuda") // BLOCK] * BLOCK + torch.arange(n, device="cuda") % BLOCK
        k = keys[slots].float().repeat_interleave(heads // kv_heads, dim=1)  # [n, heads, dim]
        v = values[slots].float().repeat_interleave(heads // kv_heads, dim=1)
        weights = torch.einsum("hd,nhd->hn", query[r, :, 0].float(), k).mul(scale).softmax(-1)
        reference[r] = torch.einsum("hn,nhd->hd", weights, v)
    row: dict[str, float] = {"heads": heads, "kv_heads": kv_heads, "rows": rows, "width": width}
    for name, fn in (("gather", gathered), ("in_place", in_place)):
        row[f"{name}_max_err"] = (fn().float() - reference).abs().max().item()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(20):  # 20 layers' worth per replay: launch gaps as in a step's graph
                fn()
        graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        row[f"{name}_us"] = start.elapsed_time(end) * 1000 / 400
        del graph
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[1, 16, 64])
    parser.add_argument("--widths", type=int, nargs="*", default=[256, 1024, 4096])
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}")
    print(f"{'model':<6} {'rows':>4} {'width':>5} {'gather us':>9} {'in place us':>11} {'x28 ms':>13} {'max err':>17}")
    ok = True
    for label, heads, kv_heads in (("1.5B", 12, 2), ("7B", 28, 4)):
        for rows in args.rows:
            for width in args.widths:
                r = case(heads, kv_heads, rows, width)
                print(json.dumps({"model": label, **r}), file=sys.stderr)
                print(
                    f"{label:<6} {rows:>4} {width:>5} {r['gather_us']:>9.1f} {r['in_place_us']:>11.1f} "
                    f"{28 * r['gather_us'] / 1000:>6.2f}/{28 * r['in_place_us'] / 1000:<6.2f} "
                    f"{r['gather_max_err']:>8.4f}/{r['in_place_max_err']:<8.4f}",
                    flush=True,
                )
                ok = ok and r["in_place_max_err"] <= max(2 * r["gather_max_err"], 1e-2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
