"""Constrained against free decoding, through the worker's HTTP API: batch 1 and 8 concurrent streamed requests of
`--new` tokens, greedy, end-of-sequence ignored. The constrained requests carry a `response_format` json_schema
(an object with one string of at least 2000 characters, so that it lasts the `--new` tokens), so every token goes
through llguidance's mask; the free ones are the baseline of the same run. Free and constrained alternate,
`--repeats` times; the table gives the best and the median of each (the machine may be shared), and the median of
the paired ratios (each constrained run against the free run just before it).

    python bench/constrained.py [--device cpu] [--new 64] [--repeats 3]
        SmolLM2-135M-Instruct (the `small` tier of `make run`, fp32), on this machine's CPU
    python bench/constrained.py --device cuda [--new 256] [--repeats 3]
        random-weight Qwen2.5-1.5B (bf16) and Qwen2.5-7B (NF4) shapes with their real 151,936-token vocabulary
        (bench/worker_gpu.py builds them), CUDA graphs on, on the GPU

Decode tokens/s: at batch 1 (completion tokens - 1) over the time from the first content chunk to the last; at
batch 8 all completion tokens over the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.worker_gpu import one_stream, write_config  # noqa: E402
from router.core.config import load_config  # noqa: E402
from tests.helpers import wait_until_ready  # noqa: E402
from tests.servers import ServerThread  # noqa: E402
from workers.app import create_worker_app  # noqa: E402

PROMPT = "Write a short story about a robot who learns to paint, in about two hundred words, as JSON."
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "story",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"story": {"type": "string", "minLength": 2000}},
            "required": ["story"],
            "additionalProperties": False,
        },
    },
}


async def measure(url: str, new_tokens: int, batch: int, constrained: bool) -> dict[str, float]:
    extra = {"response_format": SCHEMA} if constrained else None
    async with httpx.AsyncClient() as client:
        await one_stream(client, url, PROMPT, 8, extra)  # warm-up
        started = time.perf_counter()
        runs = await asyncio.gather(*(one_stream(client, url, PROMPT, new_tokens, extra) for _ in range(batch)))
        wall = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in runs)
    if batch == 1:
        return {"tok_s": (tokens - 1) / runs[0]["decode_s"], "tokens": tokens}
    return {"tok_s": tokens / wall, "tokens": tokens}


def workers(device: str) -> dict[str, dict[str, Any]]:
    """The worker tiers to measure on `device`, by tier name."""
    if device == "cpu":
        small = {"model": "embedded:smollm2-135m-instruct", "device": "cpu", "quantization": "none"}
        return {"small": {**small, "max_seq_len": 1024, "max_tokens_cap": 512, "max_batch_size": 8}}
    from bench.worker_gpu import build

    checkpoints = Path("/tmp/bench-checkpoints-v2")
    base = {"device": "cuda", "dtype": "bfloat16", "max_seq_len": 2048, "max_tokens_cap": 1024, "max_batch_size": 8}
    return {
        "small": {**base, "model": str(build("qwen2.5-1.5b", checkpoints))},
        "large": {**base, "model": str(build("qwen2.5-7b", checkpoints)), "quantization": "nf4"},
    }


def measure_tier(tier: str, worker: dict[str, Any], new: int, repeats: int) -> None:
    """Serve one tier and print a JSON row per run (prefixed `ROW `)."""
    path = write_config(Path(f"/tmp/bench-constrained-{tier}.yaml"), {tier: worker})
    started = time.monotonic()
    with ServerThread(create_worker_app(load_config(path, environ={}), tier)) as server:
        wait_until_ready(server, timeout_s=900)
        print(f"{tier} ready in {time.monotonic() - started:.0f}s", flush=True)
        url = f"{server.url}/v1/chat/completions"
        for _ in range(repeats):
            for batch in (1, 8):
                for constrained in (False, True):
                    result = asyncio.run(measure(url, new, batch, constrained))
                    row = {"tier": tier, "model": worker["model"], "batch": batch, "constrained": constrained}
                    print("ROW " + json.dumps({**row, **result}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--new", type=int, default=None, help="tokens generated per request (64 CPU, 256 GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiers", nargs="*", default=None, help="only these tiers")
    parser.add_argument("--tier", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    new = args.new or (64 if args.device == "cpu" else 256)
    tiers = workers(args.device)
    if args.tier:
        measure_tier(args.tier, tiers[args.tier], new, args.repeats)
        return 0
    runs: dict[tuple[str, int, bool], list[float]] = {}
    for tier in args.tiers or tiers:
        # Each tier in a fresh process, so one worker's memory and threads never weigh on the next.
        command = [sys.executable, __file__, "--device", args.device, "--new", str(new), "--repeats", str(args.repeats)]
        child = subprocess.run([*command, "--tier", tier], capture_output=True, text=True)
        if child.returncode != 0:
            print(f"{tier} failed:\n{child.stderr[-3000:]}", flush=True)
            continue
        for line in child.stdout.splitlines():
            print(line, flush=True)
            if line.startswith("ROW "):
                row = json.loads(line[4:])
                runs.setdefault((tier, row["batch"], row["constrained"]), []).append(row["tok_s"])
    print(
        f"\n{'tier':<6}{'batch':>6}{'free best/median':>20}{'constrained best/median':>26}{'paired cost (median)':>22}"
    )
    for tier, batch, constrained in sorted(runs):
        if constrained:
            continue
        free, bound = runs[(tier, batch, False)], runs[(tier, batch, True)]
        cost = statistics.median(1 - c / f for f, c in zip(free, bound, strict=True))
        print(
            f"{tier:<6}{batch:>6}{max(free):>11.1f} / {statistics.median(free):<6.1f}"
            f"{max(bound):>17.1f} / {statistics.median(bound):<6.1f}{cost:>22.1%}"
        )
    return 0


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sys.exit(main())
