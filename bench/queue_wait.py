"""Queue-aware routing under load: time to first token and the share served locally, with and without a limit.

Every part is its own process, started with the project's CLI: both workers on one GPU (config/gpu.yaml's, from
random-weight checkpoints of the Qwen2.5-1.5B shape in bf16 and the Qwen2.5-7B shape in NF4, made by
`tiered-router make-checkpoint`), a remote stand-in (`tiered-router standin`: first token after
--remote-delay-ms, then a word every 10 ms) and one router per variant (`tiered-router serve`), one after the
other against the same workers:

- `wait`: `routing.max_queue_wait_s` unset: requests wait in a worker's queue however long (the baseline);
- `spill`: `routing.max_queue_wait_s: --max-wait` (2.0, as config/gpu.yaml ships).

Each variant sends --requests (128) streamed chats, --concurrency (32) at a time, alternately forced to the
small and the large tier (half simple, half complex; each falls back to the remote as config/gpu.yaml says),
each a ~300-token prompt asking --max-tokens (256, ignore_eos) new tokens. Reported per variant: TTFT p50 and
p99, the share served locally (from the responses' `x-router-tier` and from the router's
`tiered_router_served_total`, which must agree),
fallback reasons, and what each worker published afterwards (step time, prefill rate, batch capacity).

    python bench/queue_wait.py [--requests 128] [--concurrency 32] [--max-wait 2.0] [--compile]
    python bench/queue_wait.py --cpu      # a smoke test of this script on the CPU (tiny models); not a measurement

Writes one JSON line per variant to --out (bench/results/queue_wait.jsonl) and prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
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

from bench.health import percentile  # noqa: E402
from bench.processes import EXE, start  # noqa: E402
from tests.servers import free_port  # noqa: E402

PROMPT = " ".join(["The lighthouse keeper wrote down the weather, the ships and the tides every hour."] * 18)
"""About 300 tokens with a Qwen2.5 tokenizer (the shaped checkpoints' vocabulary is random, the length holds)."""


def stack_config(work: Path, args: argparse.Namespace, ports: dict[str, int]) -> dict[str, Any]:
    """config/gpu.yaml (or router.yaml with --cpu) pointed at this run's processes, auth and guardrails off."""
    raw: dict[str, Any] = yaml.safe_load((ROOT / "config" / ("router.yaml" if args.cpu else "gpu.yaml")).read_text())
    raw["server"].update(port=0, admin_key_env=None)
    raw["auth"] = {"enabled": False}
    raw["redis"] = {"url": None}
    raw["discovery"] = {"interval_s": 0.2, "stale_after_s": 2.0}
    raw["routing"] = {**raw["routing"], "max_queue_wait_s": None}
    raw["reload"] = {"watch": False}
    for tier in ("small", "large", "remote"):
        raw["tiers"][tier]["guardrails"] = False
        if tier != "remote":
            raw["tiers"][tier]["base_url"] = f"http://127.0.0.1:{ports[tier]}/v1"
    raw["tiers"]["remote"].update(base_url=f"http://127.0.0.1:{ports['remote']}/v1", api_key_env=None)
    shapes = {"small": "tiny", "large": "tiny"} if args.cpu else {"small": "qwen2.5-1.5b", "large": "qwen2.5-7b"}
    for tier, shape in shapes.items():
        worker = raw["workers"][tier]
        worker.update(model=str(work / shape), port=ports[tier])
        if args.cpu:
            worker.update(device="cpu", quantization="none", max_batch_size=2, max_seq_len=1024, queue_size=64)
        else:
            worker.update(compile=args.compile)
            if args.budget:
                worker["vram"] = {**worker.get("vram", {}), "budget_fraction": args.budget[tier]}
    return raw


def make_checkpoints(work: Path, cpu: bool) -> None:
    shapes = ["tiny"] if cpu else ["qwen2.5-1.5b", "qwen2.5-7b"]
    for shape in shapes:
        started = time.monotonic()
        device = "cpu" if cpu else "cuda"
        command = [EXE, "make-checkpoint", "--shape", shape, "--output", str(work / shape), "--device", device]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        print(f"{shape} checkpoint in {time.monotonic() - started:.0f} s", flush=True)


async def one(client: httpx.AsyncClient, url: str, tier: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": tier,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    started = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        ok = response.status_code == 200
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter() - started
            if line.startswith('data: {"error"'):
                ok = False
    return {
        "asked": tier,
        "ok": ok,
        "ttft": first,
        "tier": response.headers.get("x-router-tier", "?"),
        "reason": response.headers.get("x-router-fallback-reason", ""),
    }


async def load(url: str, requests: int, concurrency: int, max_tokens: int) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(concurrency)

    async def limited(client: httpx.AsyncClient, i: int) -> dict[str, Any]:
        async with gate:
            return await one(client, url, "small" if i % 2 == 0 else "large", max_tokens)

    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        return await asyncio.gather(*(limited(client, i) for i in range(requests)))


def served_counts(url: str) -> dict[str, float]:
    """The router's `tiered_router_served_total` by `where` (local, remote)."""
    counts = {"local": 0.0, "remote": 0.0}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        for where in counts:
            if line.startswith(f'tiered_router_served_total{{where="{where}"}}'):
                counts[where] = float(line.split()[-1])
    return counts


def summarise(
    variant: str, results: list[dict[str, Any]], before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, Any]:
    ttfts = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    reasons: dict[str, int] = {}
    for r in results:
        if r["reason"]:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    local = sum(1 for r in results if r["ok"] and r["tier"] in ("small", "large"))
    served = sum(1 for r in results if r["ok"])
    local_metric, remote_metric = (after[w] - before[w] for w in ("local", "remote"))
    return {
        "variant": variant,
        "requests": len(results),
        "failed": len(results) - served,
        "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "ttft_p99_s": round(percentile(ttfts, 0.99), 3) if ttfts else None,
        "served_locally": local,
        "local_share": round(local / served, 3) if served else None,
        "local_share_by_metric": round(local_metric / (local_metric + remote_metric), 3)
        if local_metric + remote_metric
        else None,
        "by_tier": {t: sum(1 for r in results if r["ok"] and r["tier"] == t) for t in ("small", "large", "remote")},
        "fallback_reasons": reasons,
        "seconds": round(seconds, 1),
    }


def published(worker: str) -> dict[str, Any]:
    memory: dict[str, Any] = httpx.get(f"{worker}/v1/memory").json()
    keys = ("fixed", "budget", "max_batch_size", "step_seconds", "prefill_tokens_per_second", "mean_completion_tokens")
    return {key: memory.get(key) for key in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--max-wait", type=float, default=2.0, help="routing.max_queue_wait_s of the `spill` variant")
    parser.add_argument("--remote-delay-ms", type=float, default=300.0, help="the remote stand-in's first-token delay")
    parser.add_argument("--compile", action="store_true", help="torch.compile the workers (minutes more start-up)")
    parser.add_argument("--budget", type=json.loads, default=None, help='e.g. \'{"small": 0.08, "large": 0.25}\'')
    parser.add_argument("--cpu", action="store_true", help="smoke-test the script on the CPU with tiny models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "queue_wait.jsonl")
    args = parser.parse_args()
    if args.cpu:
        args.requests, args.concurrency, args.max_tokens = min(args.requests, 16), min(args.concurrency, 8), 24
    processes: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            make_checkpoints(work, args.cpu)
            ports = {name: free_port() for name in ("small", "large", "remote")}
            raw = stack_config(work, args, ports)
            remote = f"http://127.0.0.1:{ports['remote']}"
            standin = ["standin", "--port", str(ports["remote"]), "--name", "remote", "--max-words", "400"]
            standin += ["--delay-ms", str(args.remote_delay_ms), "--chunk-delay-ms", "10"]
            processes.append(start(standin, f"{remote}/ready"))
            config = work / "stack.yaml"
            config.write_text(yaml.safe_dump(raw))
            workers = {tier: f"http://127.0.0.1:{ports[tier]}" for tier in ("small", "large")}
            for tier, worker in workers.items():  # one after the other, as `up` starts them
                processes.append(start(["worker", "--tier", tier, "--config", str(config)], f"{worker}/ready", 1200))
            variants: dict[str, float | None] = {
                "wait (max_queue_wait_s unset)": None,
                f"spill (max_queue_wait_s {args.max_wait})": args.max_wait,
            }
            for i, (variant, max_wait) in enumerate(variants.items()):
                path = work / f"router-{i}.yaml"
                path.write_text(yaml.safe_dump({**raw, "routing": {**raw["routing"], "max_queue_wait_s": max_wait}}))
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                router = start(["serve", "--config", str(path), "--port", str(port)], f"{url}/health")
                processes.append(router)
                time.sleep(1.0)  # a first telemetry reading
                asyncio.run(load(url, 4, 4, 8))  # warm-up: every worker has measured a step
                before, started = served_counts(url), time.perf_counter()
                results = asyncio.run(load(url, args.requests, args.concurrency, args.max_tokens))
                seconds = time.perf_counter() - started
                row = summarise(variant, results, before, served_counts(url), seconds)
                row["workers"] = {tier: published(worker) for tier, worker in workers.items()}
                row["device"] = "cpu (smoke test)" if args.cpu else "cuda"
                rows.append(row)
                print(json.dumps(row), flush=True)
                router.terminate()
                router.wait(10)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(10)
                    except subprocess.TimeoutExpired:
                        process.kill()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
