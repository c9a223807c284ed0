"""The 4-bit projection matmuls of one 7B decode step, per path: bitsandbytes' default, its fused kernel, its
dequantize+linear, and the Triton kernel of workers/nf4_triton.py in each candidate configuration (on a GPU).

    python bench/nf4_matmul.py [--rows 1 2 4 8 16 32 64] [--layers 28] [--json FILE]

Qwen2.5-7B shapes as the worker holds them (workers/fuse.py): q+k+v fused (4608 x 3584) and gate+up fused
(37888 x 3584) with float32 scales, o_proj (3584 x 3584) and down_proj (3584 x 18944) double-quantised, random
weights quantised by bitsandbytes itself on the device. Each path is timed inside a CUDA graph (8 calls per
graph, median of 3 replays; workers.nf4_kernels.graph_seconds). Every Triton configuration is first checked
against dequantize+linear (bf16 tolerance); one that differs is reported and not timed.
Prints, per row count: each shape's time by bitsandbytes' default, its best path, and the Triton kernel's best
configuration, and the step's total (x layers), then one JSON line per row count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import nf4_triton  # noqa: E402
from workers import nf4_kernels  # noqa: E402

SHAPES = {  # name: (out, in, double-quantised scales)
    "qkv": (4608, 3584, False),
    "o": (3584, 3584, True),
    "gate_up": (37888, 3584, False),
    "down": (3584, 18944, True),
}


def make_layer(n: int, k: int, nested: bool, bias: bool) -> torch.nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(
        k, n, bias=bias, compute_dtype=torch.bfloat16, compress_statistics=nested, quant_type="nf4"
    )
    dense = torch.nn.Linear(k, n, bias=bias, dtype=torch.bfloat16)
    torch.nn.init.normal_(dense.weight, std=0.02)
    layer.load_state_dict(dense.state_dict())
    if layer.bias is not None:
        layer.bias.data = layer.bias.data.to(torch.bfloat16)  # as the worker's loaded models hold it
    return layer.cuda()


def reference(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    import bitsandbytes.functional as F

    weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.bfloat16)
    return torch.nn.functional.linear(x, weight, layer.bias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    assert torch.cuda.is_available() and nf4_triton.available(), "needs a GPU and Triton"
    torch.manual_seed(0)
    layers = {name: make_layer(n, k, nested, bias=name == "qkv") for name, (n, k, nested) in SHAPES.items()}
    lines = []
    for m in args.rows:
        totals = {"default": 0.0, "bnb_best": 0.0, "triton_best": 0.0, "best": 0.0}
        row: dict[str, object] = {"rows": m}
        for name, layer in layers.items():
            n, k, _ = SHAPES[name]
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            with torch.inference_mode():
                ref = reference(layer, x).float()
                default = nf4_kernels.time_layer(layer, m, None)
                kernel = nf4_kernels.time_layer(layer, m, True)
                dequant = nf4_kernels.time_layer(layer, m, False)
                triton_times: dict[str, float] = {}
                for config in nf4_triton.candidates(m, n, k):
                    out = nf4_triton.matmul(x, layer, config).float()
                    err = float((out - ref).abs().max())
                    if err > 0.02 * float(ref.abs().max()) + 1e-3:
                        print(f"  MISMATCH {name} rows={m} {config}: max error {err:.4g}", flush=True)
                        continue
                    triton_times[str(config)] = nf4_kernels.graph_seconds(
                        lambda config=config, x=x, layer=layer: nf4_triton.matmul(x, layer, config), reps=8
                    )
            best_triton = min(triton_times.items(), key=lambda kv: kv[1], default=("none", float("inf")))
            bnb_best = min(kernel, dequant)
            totals["default"] += default
            totals["bnb_best"] += bnb_best
            totals["triton_best"] += best_triton[1]
            totals["best"] += min(bnb_best, best_triton[1])
            row[name] = {
                "default_us": default * 1e6,
                "kernel_us": kernel * 1e6,
                "dequant_us": dequant * 1e6,
                "triton_us": {c: t * 1e6 for c, t in sorted(triton_times.items(), key=lambda kv: kv[1])},
            }
            print(
                f"rows {m:3d} {name:8s} default {default * 1e6:8.1f} us  kernel {kernel * 1e6:8.1f}  "
                f"dequant {dequant * 1e6:8.1f}  triton {best_triton[1] * 1e6:8.1f} ({best_triton[0]})",
                flush=True,
            )
        row["step_ms"] = {key: value * args.layers * 1e3 for key, value in totals.items()}
        print(
            f"rows {m:3d} step ({args.layers} layers): default {totals['default'] * args.layers * 1e3:.2f} ms, "
            f"bitsandbytes best {totals['bnb_best'] * args.layers * 1e3:.2f}, triton best "
            f"{totals['triton_best'] * args.layers * 1e3:.2f}, best of all {totals['best'] * args.layers * 1e3:.2f}",
            flush=True,
        )
        lines.append(row)
    print(torch.cuda.get_device_name(), torch.__version__)
    for row in lines:
        print(json.dumps(row))
    if args.json:
        args.json.write_text("\n".join(json.dumps(r) for r in lines) + "\n")


if __name__ == "__main__":
    main()
