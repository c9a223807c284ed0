"""Two workers on ONE real GPU, started in both orders: each worker's own fixed cost, budget and free memory.

The default deployment puts both tiers on one GPU; each worker must be charged with its own memory only, so
that whichever starts second still gets its configured share (`budget_fraction` of the device). For each order
this starts `tiered-router worker` for the first tier, waits until it is ready (its memory held), starts the
second, and prints both workers' `/v1/memory`: how own use is measured (`accounting`), own use now, `fixed`,
`budget` (and the KV rows it holds), `free`, and the device's free memory. Then a neighbour process takes
`--neighbour-gb` of the GPU: device free falls, each budget must not. Checkpoints are random-weight,
real-shaped (Qwen2.5-1.5B in bf16, Qwen2.5-7B loaded in NF4), built once by `tiered-router make-checkpoint`.
This process itself never touches CUDA, so it is not a third process on the device.

    python bench/shared_gpu.py [--order both|small-first|large-first] [--small-fraction 0.08]
        [--large-fraction 0.25] [--neighbour-gb 10] [--checkpoints DIR]

Goal: each tier's `fixed` and `budget` are the same in both orders, and `fixed` is about its own weights +
context + graph pools (not the other worker's too).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import EXE, start  # noqa: E402
from tests.servers import free_port  # noqa: E402

MB = 1e6
SHAPES = {"small": "qwen2.5-1.5b", "large": "qwen2.5-7b"}
MAX_SEQ_LEN = 4096
NEIGHBOUR = (
    "import sys, torch; x = torch.empty(int(float(sys.argv[1]) * 2**30), dtype=torch.uint8, device='cuda'); "
    "print('holding', flush=True); sys.stdin.read()"
)


def checkpoints(root: Path) -> dict[str, Path]:
    """Each tier's checkpoint, built on the GPU by a process of its own (which exits, freeing what it took)."""
    paths = {tier: root / shape for tier, shape in SHAPES.items()}
    for tier, path in paths.items():
        args = ["make-checkpoint", "--shape", SHAPES[tier], "--output", str(path), "--device", "cuda"]
        subprocess.run([EXE, *args], check=True)
    return paths


def write_config(work: Path, models: dict[str, Path], fractions: dict[str, float], ports: dict[str, int]) -> Path:
    raw: dict[str, Any] = yaml.safe_load((ROOT / "config" / "router.yaml").read_text())
    raw["guardrails"]["path"] = str(ROOT / "config" / "guardrails")
    common = {"device": "cuda", "dtype": "bfloat16", "max_seq_len": MAX_SEQ_LEN, "max_batch_size": 32}
    raw["workers"] = {
        tier: {
            **common,
            "model": str(models[tier]),
            "port": ports[tier],
            "quantization": "nf4" if tier == "large" else "none",
            "max_tokens_default": 256,
            "max_tokens_cap": 2048,
            "vram": {"budget_fraction": fractions[tier]},
        }
        for tier in SHAPES
    }
    path = work / "router.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def memory(port: int) -> dict[str, Any]:
    reading: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/v1/memory", timeout=30).json()
    return reading


def nvml_processes() -> str:
    """nvidia-smi's per-process view (PIDs may be the host's inside a container), for comparison."""
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"], capture_output=True, text=True
    )
    return "; ".join(line.strip() for line in out.stdout.splitlines()) or "(none listed)"


def row(order: str, tier: str, position: str, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "order": order,
        "tier": tier,
        "started": position,
        "accounting": m["accounting"],
        "own_mb": m["own"] / MB,
        "fixed_mb": m["fixed"] / MB,
        "budget_mb": m["budget"] / MB,
        "kv_rows": m["budget"] // (MAX_SEQ_LEN * m["kv_bytes_per_token"]),
        "free_mb": m["free"] / MB,
        "device_free_mb": m["device_free"] / MB,
        "device_used_mb": (m["total"] - m["device_free"] - m["margin"]) / MB,
    }


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'order':<12} {'tier':<6} {'started':<7} {'accounting':<18} {'own MB':>9} {'fixed MB':>9} "
        f"{'budget MB':>10} {'KV rows':>7} {'free MB':>9} {'dev free MB':>11} {'dev used MB':>11}"
    )
    for r in rows:
        print(
            f"{r['order']:<12} {r['tier']:<6} {r['started']:<7} {r['accounting']:<18} {r['own_mb']:>9.0f} "
            f"{r['fixed_mb']:>9.0f} {r['budget_mb']:>10.0f} {r['kv_rows']:>7} {r['free_mb']:>9.0f} "
            f"{r['device_free_mb']:>11.0f} {r['device_used_mb']:>11.0f}",
            flush=True,
        )


def run_order(config: Path, order: tuple[str, str], ports: dict[str, int], neighbour_gb: float) -> list[dict[str, Any]]:
    label = f"{order[0]}-first"
    workers: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    try:
        for tier in order:
            started = time.monotonic()
            url = f"http://127.0.0.1:{ports[tier]}/ready"
            workers.append(start(["worker", "--tier", tier, "--config", str(config)], url, timeout_s=900))
            print(f"[{label}] {tier} ready in {time.monotonic() - started:.0f}s", flush=True)
        for tier, position in zip(order, ("first", "second"), strict=True):
            rows.append(row(label, tier, position, memory(ports[tier])))
        print(f"[{label}] nvidia-smi per process: {nvml_processes()}", flush=True)
        if neighbour_gb > 0:
            holder = subprocess.Popen(
                [sys.executable, "-c", NEIGHBOUR, str(neighbour_gb)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            try:
                assert holder.stdout is not None
                holder.stdout.readline()
                for tier, position in zip(order, ("first", "second"), strict=True):
                    rows.append(row(f"{label}+{neighbour_gb:g}G", tier, position, memory(ports[tier])))
            finally:
                holder.communicate(b"", timeout=60)
    finally:
        for worker in reversed(workers):
            worker.terminate()
            worker.wait(timeout=60)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--order", choices=["both", "small-first", "large-first"], default="both")
    parser.add_argument("--small-fraction", type=float, default=0.08)
    parser.add_argument("--large-fraction", type=float, default=0.25)
    parser.add_argument("--neighbour-gb", type=float, default=10.0, help="a third process's GPU memory; 0: none")
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bench-checkpoints-v2"))
    args = parser.parse_args()
    models = checkpoints(args.checkpoints)
    fractions = {"small": args.small_fraction, "large": args.large_fraction}
    orders = {"small-first": ("small", "large"), "large-first": ("large", "small")}
    chosen = list(orders.values()) if args.order == "both" else [orders[args.order]]
    ports = {tier: free_port() for tier in SHAPES}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        config = write_config(Path(work), models, fractions, ports)
        for order in chosen:
            rows.extend(run_order(config, order, ports, args.neighbour_gb))
    for r in rows:
        print("ROW " + json.dumps(r))
    print_rows(rows)
    plain = [r for r in rows if "+" not in r["order"]]
    for tier in SHAPES:
        seen = {(round(r["fixed_mb"]), r["kv_rows"]) for r in plain if r["tier"] == tier}
        print(f"{tier}: (fixed MB, KV rows) over the orders run: {sorted(seen)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
