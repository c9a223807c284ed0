"""The embedded default on the CPU: SmolLM2-135M-Instruct through the worker's HTTP API, with plain `generate` as
the baseline in the same run.

Cases: full precision (the `small` tier) and bitsandbytes NF4 (the `large` tier); batch 1 and 8 concurrent
requests, each forced to `--new` tokens (ignore_eos), greedy. The baseline is `model.generate` on the same
checkpoint, batch 1 and a batch of 8 identical prompts.

    python bench/worker_cpu.py [--new 64] [--out DIR]

Writes JSON lines to DIR (default bench/results/) and prints a table last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.worker_gpu import measure, write_config  # noqa: E402
from router.core.config import load_config  # noqa: E402
from router.core.workers import WorkerConfig, var_dir  # noqa: E402
from tests.helpers import wait_until_ready  # noqa: E402
from tests.servers import ServerThread  # noqa: E402
from workers.app import create_worker_app  # noqa: E402
from workers.loader import load_model  # noqa: E402

MODEL = "embedded:smollm2-135m-instruct"
PROMPT = "Write a short story about a robot who learns to paint, in about two hundred words."


def plain_generate(quantization: str, batch: int, new_tokens: int) -> dict[str, Any]:
    loaded = load_model(WorkerConfig(model=MODEL, device="cpu", quantization=quantization), var_dir() / "checkpoints")
    chat = [{"role": "user", "content": PROMPT}]
    template = loaded.tokenizer.apply_chat_template
    inputs = template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = inputs["input_ids"].repeat(batch, 1)
    mask = inputs["attention_mask"].repeat(batch, 1)
    with torch.inference_mode():
        loaded.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        started = time.perf_counter()
        loaded.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )
        elapsed = time.perf_counter() - started
    return {"tok_s": batch * new_tokens / elapsed, "prompt_tokens": int(ids.shape[1])}


def through_worker(quantization: str, concurrency: int, new_tokens: int) -> dict[str, Any]:
    worker = {
        "model": MODEL,
        "device": "cpu",
        "quantization": quantization,
        "max_seq_len": 1024,
        "max_tokens_cap": 512,
        "max_tokens_default": 64,
        "max_batch_size": 8,
    }
    path = write_config(Path("/tmp/bench-worker-cpu.yaml"), {"small": worker})
    with ServerThread(create_worker_app(load_config(path, environ={}), "small")) as server:
        wait_until_ready(server, timeout_s=600)
        return asyncio.run(measure(f"{server.url}/v1/chat/completions", PROMPT, new_tokens, concurrency))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for quantization in ("none", "nf4"):
        for batch in (1, 8):
            rows.append({"case": "plain generate", "quantization": quantization, "concurrency": batch,
                         **plain_generate(quantization, batch, args.new)})
            rows.append({"case": "worker (HTTP, streamed)", "quantization": quantization, "concurrency": batch,
                         **through_worker(quantization, batch, args.new)})
            print(json.dumps(rows[-2]), json.dumps(rows[-1]), flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with (args.out / f"worker_cpu-{stamp}.jsonl").open("w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    print(f"\n{'case':<26}{'weights':<10}{'requests':>9}{'tok/s':>10}{'TTFT ms':>10}")
    for row in rows:
        ttft = f"{row['ttft_ms']:.0f}" if "ttft_ms" in row else "-"
        weights = "fp32" if row["quantization"] == "none" else "NF4"
        print(f"{row['case']:<26}{weights:<10}{row['concurrency']:>9}{row['tok_s']:>10.1f}{ttft:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
