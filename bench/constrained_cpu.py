"""Constrained against free decoding on the CPU: SmolLM2-135M-Instruct (the `small` tier, fp32) through the
worker's HTTP API, batch 1 and 8 concurrent streamed requests of `--new` tokens, greedy, end-of-sequence ignored.
The constrained requests carry a `response_format` json_schema (an object with one string of at least 2000
characters, so that it lasts the `--new` tokens), so every token goes through llguidance's mask; the free ones
are the baseline of the same run. Free and constrained alternate, `--repeats` times; the table gives the best and the
median of each (the machine may be shared), and the median of the paired ratios (each constrained run against
the free run just before it).

    python bench/constrained_cpu.py [--new 64] [--repeats 3]

Decode tokens/s: at batch 1 (completion tokens - 1) over the time from the first content chunk to the last; at
batch 8 all completion tokens over the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.worker_gpu import write_config  # noqa: E402
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


async def one_stream(client: httpx.AsyncClient, url: str, new_tokens: int, constrained: bool) -> dict[str, float]:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": new_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if constrained:
        body["response_format"] = SCHEMA
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async with client.stream("POST", url, json=body, timeout=600) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
    return {"decode_s": last - first, "wall_s": last - started, "tokens": tokens}


async def measure(url: str, new_tokens: int, batch: int, constrained: bool) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        await one_stream(client, url, 8, constrained)  # warm-up
        started = time.perf_counter()
        runs = await asyncio.gather(*(one_stream(client, url, new_tokens, constrained) for _ in range(batch)))
        wall = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in runs)
    if batch == 1:
        return {"tok_s": (tokens - 1) / runs[0]["decode_s"], "tokens": tokens}
    return {"tok_s": tokens / wall, "tokens": tokens}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    worker = {
        "model": "embedded:smollm2-135m-instruct",
        "device": "cpu",
        "quantization": "none",
        "max_seq_len": 1024,
        "max_tokens_cap": 512,
        "max_batch_size": 8,
    }
    path = write_config(Path("/tmp/bench-constrained-cpu.yaml"), {"small": worker})
    runs: dict[tuple[int, bool], list[float]] = {}
    with ServerThread(create_worker_app(load_config(path, environ={}), "small")) as server:
        wait_until_ready(server, timeout_s=600)
        url = f"{server.url}/v1/chat/completions"
        for _ in range(args.repeats):
            for batch in (1, 8):
                for constrained in (False, True):
                    result = asyncio.run(measure(url, args.new, batch, constrained))
                    print(json.dumps({"batch": batch, "constrained": constrained, **result}), flush=True)
                    runs.setdefault((batch, constrained), []).append(result["tok_s"])
    print(f"\n{'batch':>5}{'free best/median':>20}{'constrained best/median':>26}{'paired cost (median)':>22}")
    for batch in (1, 8):
        free, constrained = runs[(batch, False)], runs[(batch, True)]
        cost = statistics.median(1 - c / f for f, c in zip(free, constrained, strict=True))
        print(
            f"{batch:>5}{max(free):>11.1f} / {statistics.median(free):<6.1f}"
            f"{max(constrained):>17.1f} / {statistics.median(constrained):<6.1f}{cost:>22.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
