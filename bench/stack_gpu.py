"""The whole stack on one GPU, started by the project's own CLI: router, small and large workers, a stand-in remote.

For each checkout given (today's code as the baseline, and the code under test, in the same run), this starts
`tiered-router up` with both workers on the GPU at a 24 GB-class budget (`budget_fraction` of the card) and
measures through the router, as clients see it:

- each worker's `fixed` cost and KV budget (its `/v1/memory`);
- capacity: a burst of concurrent ~300-token chats sent to the large tier (which falls back to the remote):
  the most the large worker ran at once, how many it served and how many spilled to the remote;
- TTFT p50/p99 of 128 mixed requests (half simple, half complex, routed by the classifier) at concurrency 32,
  and the share served locally;
- decode tokens/s of each worker at 1 and 16 concurrent streams.

Checkpoints have random weights of the real shapes (Qwen2.5-1.5B bf16, Qwen2.5-7B loaded in NF4), so lengths are
forced with `min_tokens`. The guardrails stay off: they run on the router's CPU and are measured by
bench/guard_quality.py and bench/health_under_load.py.

    python bench/stack_gpu.py --case base=/path/to/old/checkout --case new=. [--out DIR]

`--set LABEL:dotted.key=value` overrides a config key for one case (e.g. new:workers.large.max_batch_size=128).
Writes JSON lines to DIR and each process's log, then prints a table last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
PORTS = {"router": 18000, "small": 18001, "large": 18002, "remote": 18009}
SHAPES = {"cuda": ("qwen2.5-1.5b", "qwen2.5-7b"), "cpu": ("tiny", "tiny")}
"""The checkpoints of the small and large tiers; `--smoke` runs the whole script on the CPU with tiny ones."""
FILLER = (
    "The committee met on a rainy morning to review the quarterly figures, the hiring plan and the budget for "
    "the new warehouse, and agreed to meet again once the auditors had finished their report. "
)


def base_config(checkpoints: Path, small_fraction: float, large_fraction: float, device: str) -> dict[str, Any]:
    url = "http://127.0.0.1:{}/v1".format
    worker = {"device": device, "max_seq_len": 4096, "max_tokens_cap": 2048, "max_tokens_default": 128}
    return {
        "server": {"host": "127.0.0.1", "port": PORTS["router"]},
        "tiers": {
            "small": {
                "base_url": url(PORTS["small"]),
                "model": "small",
                "guardrails": False,
                "fallback": ["large", "remote"],
            },
            "large": {"base_url": url(PORTS["large"]), "model": "large", "guardrails": False, "fallback": ["remote"]},
            "remote": {
                "kind": "remote",
                "base_url": url(PORTS["remote"]),
                "model": "remote-model",
                "api_key_env": "BENCH_REMOTE_KEY",
                "guardrails": False,
            },
        },
        "classifier": {"kind": "static", "threshold": 0.5},
        "routing": {"allow_forced_tier": True, "fallback_deadline_s": 60.0, "preflight": True},
        "discovery": {"interval_s": 0.25, "stale_after_s": 2.0, "poll": True},
        "reload": {"watch": False},
        "rules": [
            {"name": "simple", "when": {"complexity": "simple"}, "tier": "small"},
            {"name": "complex", "tier": "large"},
        ],
        "workers": {
            "small": {
                **worker,
                "model": str(checkpoints / SHAPES[device][0]),
                "port": PORTS["small"],
                "vram": {"budget_fraction": small_fraction},
            },
            "large": {
                **worker,
                "model": str(checkpoints / SHAPES[device][1]),
                "port": PORTS["large"],
                "quantization": "nf4",
                "vram": {"budget_fraction": large_fraction},
            },
        },
    }


def apply_override(config: dict[str, Any], dotted: str, raw: str) -> None:
    *path, last = dotted.split(".")
    node = config
    for key in path:
        node = node.setdefault(key, {})
    node[last] = yaml.safe_load(raw)


def build_checkpoints(root: Path, device: str) -> None:
    sys.path.insert(0, str(ROOT))
    from workers.checkpoints import build_shaped_checkpoint

    for shape in sorted(set(SHAPES[device])):
        started = time.monotonic()
        build_shaped_checkpoint(root / shape, shape, device=device, dtype="bfloat16" if device == "cuda" else "float32")
        print(f"{shape} checkpoint ready in {time.monotonic() - started:.0f}s", flush=True)
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


class Stack:
    """`tiered-router up` plus a stand-in remote, from one checkout, logs under `logs`."""

    def __init__(self, label: str, code: Path, config_path: Path, logs: Path) -> None:
        self.label, self.code, self.config_path, self.logs = label, code, config_path, logs
        self.env = {
            **os.environ,
            "PYTHONPATH": f"{code}:{os.environ.get('PYTHONPATH', '')}",
            "BENCH_REMOTE_KEY": "bench",
            "NEMO_GUARDRAILS_NO_USAGE_STATS": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{self.label}-{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", *args],
            cwd=self.code,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start(self, timeout_s: float) -> None:
        self._spawn(
            "remote",
            [
                "standin",
                "--port",
                str(PORTS["remote"]),
                "--name",
                "remote-standin",
                "--delay-ms",
                "300",
                "--chunk-delay-ms",
                "10",
                "--max-words",
                "400",
            ],
        )
        up = self._spawn(
            "up", ["--log-format", "text", "up", "--config", str(self.config_path), "--start-timeout", str(timeout_s)]
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if up.poll() is not None:
                raise RuntimeError(f"{self.label}: `up` exited with {up.returncode}; see {self.label}-up.log")
            for worker in ("small", "large"):  # a worker that failed to load answers 503 "failed" for good
                try:
                    ready = httpx.get(f"http://127.0.0.1:{PORTS[worker]}/ready", timeout=1)
                except httpx.HTTPError:
                    continue
                if ready.status_code != 200 and "failed" in ready.text:
                    raise RuntimeError(f"{self.label}: the {worker} worker failed to load: {ready.text[:300]}")
            try:
                if httpx.get(f"http://127.0.0.1:{PORTS['router']}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"{self.label}: the stack did not come up in {timeout_s:.0f}s")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def chat(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed request: its tier, time to first token, completion tokens and the span they took."""
    started = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    ) as r:
        tier = r.headers.get("x-router-tier", "?")
        if r.status_code != 200:
            return {"tier": tier, "status": r.status_code, "error": (await r.aread()).decode()[:300]}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            now = time.perf_counter()
            if event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                first = first or now
                last = now
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    ttft = (first - started) if first else None
    span = (last - first) if first and last else 0.0
    return {"tier": tier, "status": 200, "ttft": ttft, "tokens": tokens, "span": span}


def body(tier: str, text: str, tokens: int) -> dict[str, Any]:
    return {
        "model": tier,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "temperature": 0,
    }


async def memory(worker: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        return dict((await client.get(f"http://127.0.0.1:{PORTS[worker]}/v1/memory")).json())


async def bounded(n: int, concurrency: int, make: Any) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORTS['router']}", timeout=600, limits=limits) as c:

        async def one(i: int) -> dict[str, Any]:
            async with gate:
                try:
                    return await chat(c, make(i))
                except httpx.HTTPError as exc:
                    return {"tier": "?", "status": -1, "error": repr(exc)}

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def peak_running(worker: str, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError, ValueError):
            peak = max(peak, int((await memory(worker)).get("running", 0)))
        await asyncio.sleep(0.1)
    return peak


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def decode_rate(results: list[dict[str, Any]]) -> float:
    """Aggregate decode tokens/s: every stream's tokens after its first, over the time all of them spanned."""
    spans = [r["span"] for r in results if r.get("status") == 200 and r.get("span")]
    tokens = sum(r["tokens"] - 1 for r in results if r.get("status") == 200 and r.get("tokens"))
    return tokens / max(spans) if spans else 0.0


async def measure(args: argparse.Namespace, prompts: dict[str, list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for worker in ("small", "large"):
        m = await memory(worker)
        out[f"{worker}_memory"] = {
            k: m.get(k)
            for k in (
                "fixed",
                "budget",
                "free",
                "total",
                "kv_bytes_per_token",
                "accounting",
                "block_size",
                "blocks_total",
                "blocks_free",
            )
        }
    for worker in ("small", "large"):
        for streams in (1, 16):
            await bounded(streams, streams, lambda i, w=worker: body(w, FILLER, 16))  # warm
            runs = await bounded(streams, streams, lambda i, w=worker: body(w, FILLER + str(i), args.decode_tokens))
            out[f"{worker}_decode_{streams}"] = {"tok_s": decode_rate(runs), "tiers": tally(runs)}
    # Capacity: ~300-token chats (about 200 prompt + 100 generated) sent to large at once.
    chat_text = FILLER * 5
    stop = asyncio.Event()
    watcher = asyncio.create_task(peak_running("large", stop))
    burst = await bounded(args.burst, args.burst, lambda i: body("large", f"{i} {chat_text}", 100))
    stop.set()
    out["capacity"] = {
        "burst": args.burst,
        "peak_running_large": await watcher,
        "tiers": tally(burst),
        "errors": [r for r in burst if r.get("status") != 200][:3],
    }
    # Mixed: half simple, half complex, routed by the classifier, at concurrency 32.
    mixed_prompts = [p for pair in zip(prompts["simple"], prompts["complex"], strict=False) for p in pair][:128]
    mixed = await bounded(len(mixed_prompts), 32, lambda i: body("auto", mixed_prompts[i], args.mixed_tokens))
    ttfts = [r["ttft"] for r in mixed if r.get("ttft") is not None]
    local = sum(1 for r in mixed if r["tier"] in ("small", "large"))
    out["mixed"] = {
        "n": len(mixed),
        "ttft_p50": pct(ttfts, 0.5),
        "ttft_p99": pct(ttfts, 0.99),
        "local_share": local / len(mixed),
        "tiers": tally(mixed),
        "errors": [r for r in mixed if r.get("status") != 200][:3],
    }
    return out


def tally(results: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        key = r["tier"] if r.get("status") == 200 else f"error:{r.get('status')}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def load_prompts() -> dict[str, list[str]]:
    prompts: dict[str, list[str]] = {"simple": [], "complex": []}
    for line in (ROOT / "bench/data/route_heldout.jsonl").read_text().splitlines():
        row = json.loads(line)
        text = row.get("prompt") or row["messages"][-1]["content"]
        prompts.setdefault(row["label"], []).append(text)
    return prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", required=True, help="LABEL=CHECKOUT (run in this order)")
    parser.add_argument("--set", action="append", default=[], help="LABEL:dotted.key=value")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/stack-checkpoints"))
    parser.add_argument("--small-fraction", type=float, default=0.09)
    parser.add_argument("--large-fraction", type=float, default=0.21)
    parser.add_argument("--burst", type=int, default=192)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--mixed-tokens", type=int, default=64)
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--smoke", action="store_true", help="tiny checkpoints on the CPU: checks the script itself")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    build_checkpoints(args.checkpoints, device)
    prompts = load_prompts()
    rows = []
    for case in args.case:
        label, _, code = case.partition("=")
        config = base_config(args.checkpoints, args.small_fraction, args.large_fraction, device)
        for item in args.set:
            who, _, assignment = item.partition(":")
            if who == label:
                key, _, value = assignment.partition("=")
                apply_override(config, key, value)
        config_path = args.out / f"{label}-config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        stack = Stack(label, Path(code).resolve(), config_path, args.out)
        started = time.monotonic()
        try:
            stack.start(args.start_timeout)
            ready_s = time.monotonic() - started
            result = {"case": label, "code": str(code), "ready_s": ready_s, **asyncio.run(measure(args, prompts))}
        except Exception as exc:  # one case failing still reports the others
            result = {"case": label, "code": str(code), "failed": repr(exc)}
        finally:
            stack.stop()
        print(json.dumps(result), flush=True)
        with open(args.out / "stack_gpu.jsonl", "a") as fh:
            fh.write(json.dumps(result) + "\n")
        rows.append(result)
    print_table(rows)
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    def mb(value: Any) -> str:
        return f"{value / 1e6:,.0f}" if isinstance(value, int | float) else "-"

    print(
        "\n| case | small fixed MB | large fixed MB | large budget MB | peak running on large (burst) | "
        "burst served local/remote | mixed TTFT p50 / p99 s | local share | small tok/s 1/16 | large tok/s 1/16 |"
    )
    print("|---" * 10 + "|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['case']} | failed: {r['failed'][:120]} |")
            continue
        cap, mixed = r["capacity"], r["mixed"]
        local = sum(v for k, v in cap["tiers"].items() if k in ("small", "large"))
        print(
            f"| {r['case']} | {mb(r['small_memory']['fixed'])} | {mb(r['large_memory']['fixed'])} | "
            f"{mb(r['large_memory']['budget'])} | {cap['peak_running_large']} | {local}/{cap['tiers'].get('remote', 0)}"
            f" | {mixed['ttft_p50']:.2f} / {mixed['ttft_p99']:.2f} | {mixed['local_share']:.0%} | "
            f"{r['small_decode_1']['tok_s']:.0f} / {r['small_decode_16']['tok_s']:.0f} | "
            f"{r['large_decode_1']['tok_s']:.0f} / {r['large_decode_16']['tok_s']:.0f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
