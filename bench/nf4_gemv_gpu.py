"""One row times each 4-bit weight of a 7B decode step: bitsandbytes' paths against bench/nf4_gemv.py's kernel.

    python bench/nf4_gemv_gpu.py [--layers 28] [--json FILE]      # on a GPU host with Triton

Qwen2.5-7B shapes as the worker holds them (bench/nf4_matmul.py's `SHAPES`: q+k+v and gate+up fused with float32
scales, o and down double-quantised), plus o and down with float32 scales (what bitsandbytes' kernel gains when the
scales need no second lookup). Random weights quantised by bitsandbytes on the device. Each path is timed inside a
CUDA graph (workers.nf4_kernels.graph_seconds); every kernel configuration is first checked against dequantize +
linear (bf16 tolerance) and one that differs is reported and not timed. Prints each weight's times and the
28-layer step's total per path, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import nf4_gemv  # noqa: E402
from bench.nf4_matmul import SHAPES, make_layer, reference  # noqa: E402
from workers import nf4_kernels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    assert torch.cuda.is_available() and nf4_gemv.available(), "needs a GPU and Triton"
    torch.manual_seed(0)
    shapes = dict(SHAPES)
    shapes.update({"o_float": (3584, 3584, False), "down_float": (3584, 18944, False)})
    report: dict[str, dict[str, object]] = {}
    for name, (n, k, nested) in shapes.items():
        layer = make_layer(n, k, nested, bias=name == "qkv")
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            ref = reference(layer, x).float()
            kernel = nf4_kernels.time_layer(layer, 1, True)
            dequant = nf4_kernels.time_layer(layer, 1, False)
            times: dict[str, float] = {}
            for config in nf4_gemv.candidates(n, k):
                out = nf4_gemv.layer_gemv(x, layer, config).float()
                err = float((out - ref).abs().max())
                if err > 0.02 * float(ref.abs().max()) + 1e-3:
                    print(f"  MISMATCH {name} {config}: max error {err:.4g}", flush=True)
                    continue
                times[str(config)] = nf4_kernels.graph_seconds(
                    lambda config=config, x=x, layer=layer: nf4_gemv.layer_gemv(x, layer, config), reps=8
                )
        ranked = sorted(times.items(), key=lambda kv: kv[1])
        best = ranked[0] if ranked else ("none", float("inf"))
        gb = n * k / 2 / 1e9
        report[name] = {
            "kernel_us": kernel * 1e6,
            "dequant_us": dequant * 1e6,
            "gemv_best": best[0],
            "gemv_us": best[1] * 1e6,
            "gemv_top5": {c: round(t * 1e6, 2) for c, t in ranked[:5]},
            "kernel_gb_s": gb / kernel,
            "gemv_gb_s": gb / best[1],
        }
        print(
            f"{name:10s} {n}x{k} bnb kernel {kernel * 1e6:7.1f} us ({gb / kernel:6.0f} GB/s)  dequant "
            f"{dequant * 1e6:7.1f}  gemv {best[1] * 1e6:7.1f} us ({gb / best[1]:6.0f} GB/s) {best[0]}",
            flush=True,
        )
        del layer
        torch.cuda.empty_cache()
    for scales in ("nested o/down", "float o/down"):
        names = ["qkv", "gate_up"] + (["o", "down"] if scales == "nested o/down" else ["o_float", "down_float"])
        bnb = sum(float(report[m]["kernel_us"]) for m in names) * args.layers / 1e3  # type: ignore[arg-type]
        ours = sum(float(report[m]["gemv_us"]) for m in names) * args.layers / 1e3  # type: ignore[arg-type]
        print(f"step ({args.layers} layers, {scales}): bitsandbytes kernel {bnb:.2f} ms, gemv {ours:.2f} ms")
    print(torch.cuda.get_device_name(), torch.__version__)
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
