"""Worker decoding on a GPU, measured through the worker's HTTP API, with plain `generate` as the baseline.

Builds real-shaped checkpoints with random weights on the GPU (Qwen2.5-1.5B shape in bf16, Qwen2.5-7B
shape loaded in NF4), loads them through the worker's own loader, serves each configuration with the
worker app on loopback and measures, per case: decode tokens/s at batch 1, aggregate tokens/s at 8 and
16 concurrent requests, time to first token, and peak GPU memory (allocator and NVML views); CUDA
graphs on and off. Each model is also timed with plain `model.generate` in the same run.

    python bench/worker_gpu.py [--quick] [--out DIR]

Writes JSON lines to DIR (default bench/results/) and prints a table last.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.core.config import load_config  # noqa: E402
from tests.servers import ServerThread  # noqa: E402
from workers.app import create_worker_app  # noqa: E402
from workers.checkpoints import build_shaped_checkpoint  # noqa: E402


def nvml_used_mb() -> float:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True
    ).stdout
    return float(out.strip().splitlines()[0]) if out.strip() else -1.0


def build(name: str, root: Path) -> Path:
    """A random-weight checkpoint of `name`'s shape, made on the GPU in bf16 (`tiered-router make-checkpoint`)."""
    started = time.monotonic()
    path = build_shaped_checkpoint(root / name, name, device="cuda", dtype="bfloat16")
    gc.collect()
    torch.cuda.empty_cache()
    print(f"{name} ready in {time.monotonic() - started:.0f}s", flush=True)
    return path


def nf4_config() -> Any:
    """The worker's 4-bit setup for the baselines: NF4, double quantisation, bf16 compute."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def plain_generate(path: Path, nf4: bool, prompt_len: int, new_tokens: int) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    torch.cuda.reset_peak_memory_stats()
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16, "device_map": "cuda:0"}
    if nf4:
        kwargs["quantization_config"] = nf4_config()
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    ids = torch.randint(100, 1000, (1, prompt_len), device="cuda")
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    result = {"tok_s": new_tokens / elapsed, "peak_allocated_gb": torch.cuda.max_memory_allocated() / 1e9}
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return result


def generate_batch(
    path: Path, nf4: bool, prompt_len: int, new_tokens: int, counts: tuple[int, ...]
) -> list[dict[str, Any]]:
    """transformers' own continuous batching (`generate_batch`, paged attention) on the same checkpoint: the peer
    baseline of issue 19. All tokens of `count` requests over the wall time; end of sequence is cleared so each
    request runs its `new_tokens` (the weights are random)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16, "device_map": device, "attn_implementation": "paged|sdpa"}
    if nf4:
        kwargs["quantization_config"] = nf4_config()
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for count in counts:
        prompts = [torch.randint(100, 1000, (prompt_len,), generator=generator).tolist() for _ in range(count)]
        model.generate_batch(inputs=prompts[:1], generation_config=config, max_new_tokens=8)  # warm-up
        started = time.perf_counter()
        outputs = model.generate_batch(inputs=prompts, generation_config=config)
        wall = time.perf_counter() - started
        tokens = sum(len(o.generated_tokens) for o in outputs.values())
        rows.append(
            {"case": f"generate_batch x{count}", "concurrency": count, "tok_s": tokens / wall, "tokens": tokens}
        )
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


async def one_stream(
    client: httpx.AsyncClient, url: str, prompt: str, new_tokens: int, extra: dict[str, Any] | None = None
) -> dict[str, float]:
    """One streamed request of exactly `new_tokens` (greedy, end of sequence ignored), `extra` merged into its body."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": new_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra or {}),
    }
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
                now = time.perf_counter()
                first = first or now
                last = now
    return {"ttft_s": first - started, "decode_s": last - first, "total_s": last - started, "tokens": tokens}


async def measure(url: str, prompt: str, new_tokens: int, concurrency: int) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        await one_stream(client, url, prompt, 16)  # warm-up
        started = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, prompt, new_tokens) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in results)
    if concurrency == 1:
        r = results[0]
        return {"tok_s": (r["tokens"] - 1) / r["decode_s"], "ttft_ms": 1000 * r["ttft_s"], "tokens": tokens}
    return {"tok_s": tokens / wall, "ttft_ms": 1000 * min(r["ttft_s"] for r in results), "tokens": tokens}


def serve_case(config_path: Path, tier: str, cases: list[tuple[str, int, int]], prompt: str) -> list[dict[str, Any]]:
    torch.cuda.reset_peak_memory_stats()
    config = load_config(config_path, environ={})
    started = time.monotonic()
    server = ServerThread(create_worker_app(config, tier)).__enter__()
    rows = []
    try:
        deadline = time.monotonic() + 900
        while (ready := httpx.get(f"{server.url}/ready")).status_code != 200:
            detail = str(ready.json().get("detail", ""))
            if "failed" in detail or time.monotonic() > deadline:
                raise RuntimeError(detail)
            time.sleep(0.5)
        ready_s = time.monotonic() - started  # load, graph capture and (with compile: true) compilation
        print(f"{tier} ready in {ready_s:.1f} s", file=sys.stderr, flush=True)
        memory = httpx.get(f"{server.url}/v1/memory").json()
        for label, concurrency, new_tokens in cases:
            result = asyncio.run(measure(f"{server.url}/v1/chat/completions", prompt, new_tokens, concurrency))
            rows.append({"case": label, "concurrency": concurrency, **result})
        peak = {
            "ready_s": ready_s,
            "peak_allocated_gb": torch.cuda.max_memory_allocated() / 1e9,
            "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9,
            "nvml_used_gb": nvml_used_mb() / 1e3,
            "ledger": memory,
        }
        for row in rows:
            row.update(peak)
    finally:
        server.__exit__(None, None, None)
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def write_config(path: Path, workers: dict[str, dict[str, Any]]) -> Path:
    raw = yaml.safe_load((ROOT / "config" / "router.yaml").read_text())
    raw["workers"] = workers
    path.write_text(yaml.safe_dump(raw))
    return path


def run_case(name: str, small: Path, large: Path, new: int) -> list[dict[str, Any]]:
    """One case, in this process (the parent starts a fresh process per case, so memory peaks are its own)."""
    tmp = Path("/tmp/bench-worker")
    tmp.mkdir(exist_ok=True)
    prompt = "word " * 500  # ~512 prompt tokens after the chat template
    base = {"device": "cuda", "dtype": "bfloat16", "max_tokens_cap": 1024, "max_tokens_default": 256, "queue_size": 64}
    small_w = {**base, "model": str(small), "max_seq_len": 2048, "max_batch_size": 16}
    large_w = {**base, "model": str(large), "quantization": "nf4", "max_seq_len": 2048, "max_batch_size": 16}
    load = [("batch1", 1, new), ("concurrent8", 8, new), ("concurrent16", 16, new)]
    if name == "1.5b-bf16-graphs":
        return serve_case(write_config(tmp / "a.yaml", {"small": small_w}), "small", load, prompt)
    if name == "1.5b-bf16-compiled":
        config = write_config(tmp / "g.yaml", {"small": {**small_w, "compile": True}})
        return serve_case(config, "small", [("batch1", 1, new), ("concurrent16", 16, new)], prompt)
    if name == "7b-nf4-compiled":
        config = write_config(tmp / "h.yaml", {"large": {**large_w, "compile": True}})
        return serve_case(config, "large", [("batch1", 1, new), ("concurrent16", 16, new)], prompt)
    if name == "7b-nf4-one-4k-request-chunk256":
        one = {**large_w, "max_seq_len": 4352, "max_batch_size": 1, "max_tokens_cap": 300, "prefill_chunk": 256}
        return serve_case(
            write_config(tmp / "i.yaml", {"large": one}), "large", [("4k-prompt", 1, new)], "word " * 4000
        )
    if name == "1.5b-bf16-graphs-unfused":  # the same-run baseline of fuse_projections
        config = write_config(tmp / "j.yaml", {"small": {**small_w, "fuse_projections": False}})
        return serve_case(config, "small", load, prompt)
    if name == "7b-nf4-graphs-unfused":  # the same-run baseline of fuse_projections and nf4_kernels: measured
        unfused = {**large_w, "fuse_projections": False, "nf4_kernels": "bitsandbytes"}
        return serve_case(write_config(tmp / "k.yaml", {"large": unfused}), "large", load, prompt)
    if name == "1.5b-bf16-eager":
        config = write_config(tmp / "b.yaml", {"small": {**small_w, "cuda_graphs": False}})
        return serve_case(config, "small", [("batch1", 1, new)], prompt)
    if name == "7b-nf4-graphs":
        return serve_case(write_config(tmp / "c.yaml", {"large": large_w}), "large", load, prompt)
    if name == "7b-nf4-eager":
        config = write_config(tmp / "d.yaml", {"large": {**large_w, "cuda_graphs": False}})
        return serve_case(config, "large", [("batch1", 1, new)], prompt)
    if name == "7b-nf4-one-4k-request":
        one = {**large_w, "max_seq_len": 4352, "max_batch_size": 1, "max_tokens_cap": 300}
        return serve_case(
            write_config(tmp / "e.yaml", {"large": one}), "large", [("4k-prompt", 1, new)], "word " * 4000
        )
    if name.startswith("7b-nf4-one-4k-request-idle"):  # prefill_chunk_idle: 2048 or 4096 tokens a forward when idle
        idle = int(name.removeprefix("7b-nf4-one-4k-request-idle"))
        one = {**large_w, "max_seq_len": 4352, "max_batch_size": 1, "max_tokens_cap": 300, "prefill_chunk_idle": idle}
        return serve_case(
            write_config(tmp / f"e{idle}.yaml", {"large": one}), "large", [("4k-prompt", 1, new)], "word " * 4000
        )
    if name == "both-tiers":
        both = {
            "small": {**small_w, "max_batch_size": 8, "port": 0},
            "large": {**large_w, "max_batch_size": 8, "port": 0},
        }
        return serve_both(write_config(tmp / "f.yaml", both), prompt, new)
    if name == "1.5b-plain-generate":
        return [{"case": "batch1", **plain_generate(small, False, 512, new)}]
    if name == "7b-plain-generate":
        return [{"case": "batch1", **plain_generate(large, True, 512, new)}]
    if name == "1.5b-generate-batch":
        return generate_batch(small, False, 512, new, (1, 16, 64))
    if name == "7b-generate-batch":
        return generate_batch(large, True, 512, new, (1, 16, 64))
    raise SystemExit(f"unknown case {name}")


CASES = [
    "1.5b-plain-generate",
    "1.5b-generate-batch",
    "1.5b-bf16-graphs",
    "1.5b-bf16-graphs-unfused",
    "1.5b-bf16-eager",
    "7b-plain-generate",
    "7b-generate-batch",
    "7b-nf4-graphs",
    "7b-nf4-graphs-unfused",
    "7b-nf4-eager",
    "7b-nf4-one-4k-request",
    "7b-nf4-one-4k-request-chunk256",
    "7b-nf4-one-4k-request-idle2048",
    "7b-nf4-one-4k-request-idle4096",
    "both-tiers",
    "1.5b-bf16-compiled",
    "7b-nf4-compiled",
]


def serve_both(config_path: Path, prompt: str, new: int) -> list[dict[str, Any]]:
    torch.cuda.reset_peak_memory_stats()
    config = load_config(config_path, environ={})
    servers = [ServerThread(create_worker_app(config, t)).__enter__() for t in ("small", "large")]
    try:
        for server in servers:
            while httpx.get(f"{server.url}/ready").status_code != 200:
                time.sleep(0.5)
        rows = [
            {"case": f"{tier}, 8 concurrent", **asyncio.run(measure(f"{s.url}/v1/chat/completions", prompt, new, 8))}
            for tier, s in zip(("small", "large"), servers, strict=True)
        ]
        peak = {
            "peak_allocated_gb": torch.cuda.max_memory_allocated() / 1e9,
            "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9,
            "nvml_used_gb": nvml_used_mb() / 1e3,
        }
        return [{**row, **peak} for row in rows]
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer tokens, for a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bench-checkpoints-v2"))
    parser.add_argument("--only", nargs="*", default=None, help="case name prefixes to run")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--case-timeout", type=float, default=900, help="seconds before a case is abandoned")
    args = parser.parse_args()
    new = 64 if args.quick else 256
    small, large = build("qwen2.5-1.5b", args.checkpoints), build("qwen2.5-7b", args.checkpoints)
    if args.case:
        for row in run_case(args.case, small, large, new):
            row.update(variant=args.case, device=torch.cuda.get_device_name())
            print("ROW " + json.dumps(row, default=str), flush=True)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for name in CASES:
        if args.only and not any(name.startswith(p) for p in args.only):
            continue
        command = [sys.executable, __file__, "--case", name, "--checkpoints", str(args.checkpoints)]
        try:
            child = subprocess.run(
                command + (["--quick"] if args.quick else []), capture_output=True, text=True, timeout=args.case_timeout
            )
        except subprocess.TimeoutExpired as exc:
            print(f"case {name} ran past {args.case_timeout:.0f} s:\n{str(exc.stderr or '')[-3000:]}", flush=True)
            continue
        rows = [json.loads(line[4:]) for line in child.stdout.splitlines() if line.startswith("ROW ")]
        if child.returncode != 0 or not rows:
            print(f"case {name} failed:\n{child.stderr[-3000:]}", flush=True)
            continue
        for row in rows:
            print(json.dumps({k: v for k, v in row.items() if k != "ledger"}, default=str), flush=True)
        results.extend(rows)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    with (args.out / f"worker_gpu-{stamp}.jsonl").open("w") as fh:
        for row in results:
            fh.write(json.dumps(row, default=str) + "\n")
    print(
        f"\n{'variant':<24} {'case':<22} {'tok/s':>8} {'ttft ms':>8} {'ready s':>8} {'peak alloc':>10} {'reserved':>9} "
        f"{'nvml':>7}"
    )
    for r in results:
        print(
            f"{r['variant']:<24} {r['case']:<22} {r.get('tok_s', 0):>8.1f} {r.get('ttft_ms', 0):>8.1f} "
            f"{r.get('ready_s', 0):>8.1f} "
            f"{r.get('peak_allocated_gb', 0):>9.2f}G {r.get('peak_reserved_gb', 0):>8.2f}G "
            f"{r.get('nvml_used_gb', 0):>6.2f}G"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sys.exit(main())
