"""VRAM-aware routing and fallback: the pressure test as counts, what pre-flight costs, how fast failover is.

Every part runs as its own process on loopback: a real worker (`tiered-router worker`, the tiny `small`
checkpoint on the CPU, a simulated 8 GB GPU whose KV-cache pool fits 4 requests of 200 new tokens at
once), a remote stand-in (`tiered-router standin`, first token after 50 ms, a word every 5 ms) and router
variants (`tiered-router serve`):

1. pressure: N concurrent long requests (200 tokens, half of them streamed) at the small tier, through
   - pre-flight + fallback (the default), - fallback on the worker's refusal only (`preflight: false`),
   - no fallback (the baseline: what a plain proxy in front of the worker does);
   counted as served locally, served remotely, failed; plus the worker's ledger afterwards.
2. pre-flight decision cost: `Dispatcher._plan` in process, over a fleet of 4 workers.
3. failover time: extra latency before the first byte when the chain moves on (refused connection, the
   worker's 503, pre-flight), against the remote asked directly; and the gap a stream sees when its
   upstream breaks off mid-way and the remote continues it.

    python bench/fallback.py [--requests 48]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import start  # noqa: E402
from tests.servers import free_port  # noqa: E402

LONG = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
GB = 1024**3


def base_config(work: Path, worker_port: int, remote: str) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((ROOT / "config" / "router.yaml").read_text())
    raw["server"]["port"] = 0
    raw["tiers"]["small"]["base_url"] = f"http://127.0.0.1:{worker_port}/v1"
    raw["tiers"]["small"]["fallback"] = ["remote"]
    raw["tiers"]["remote"].update(base_url=f"{remote}/v1", api_key_env=None, guardrails=False)
    raw["tiers"]["large"]["guardrails"] = False
    raw["guardrails"]["path"] = str(ROOT / "config" / "guardrails")
    raw["discovery"] = {"interval_s": 0.1, "stale_after_s": 1.0}
    raw["workers"]["small"].update(
        checkpoint_dir=str(work / "checkpoints"),
        device="cpu",
        port=worker_port,
        max_batch_size=4,
        max_seq_len=256,
        max_tokens_cap=200,
        vram={"simulate_total_bytes": 8 * GB, "safety_margin_bytes": 0},
    )
    return raw


def write(work: Path, name: str, raw: dict[str, Any]) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def serve(path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    router = start(["serve", "--config", str(path), "--port", str(port)], f"http://127.0.0.1:{port}/health")
    return router, f"http://127.0.0.1:{port}"


async def pressure(router: str, n: int) -> dict[str, Any]:
    async def one(client: httpx.AsyncClient, i: int) -> tuple[str, str]:
        body = {"model": "small", "messages": LONG, "max_tokens": 200, "ignore_eos": True, "stream": i % 2 == 0}
        url = f"{router}/v1/chat/completions"
        try:
            if body["stream"]:
                async with client.stream("POST", url, json=body) as response:
                    lines = [line async for line in response.aiter_lines() if line]
                    ok = response.status_code == 200 and lines[-1] == "data: [DONE]"
                    ok = ok and not any(line.startswith('data: {"error"') for line in lines)
            else:
                response = await client.post(url, json=body)
                ok = response.status_code == 200
        except httpx.HTTPError as exc:
            return "failed", type(exc).__name__
        if not ok:
            return "failed", str(response.status_code)
        return response.headers.get("x-router-tier", "?"), response.headers.get("x-router-fallback-reason", "")

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=300) as client:
        results = await asyncio.gather(*(one(client, i) for i in range(n)))
    elapsed = time.perf_counter() - started
    reasons: dict[str, int] = {}
    for tier, reason in results:
        if reason:
            reasons[f"{tier}: {reason}"] = reasons.get(f"{tier}: {reason}", 0) + 1
    return {
        "requests": n,
        "served_locally": sum(1 for tier, _ in results if tier == "small"),
        "served_remotely": sum(1 for tier, _ in results if tier == "remote"),
        "failed": sum(1 for tier, _ in results if tier == "failed"),
        "reasons": reasons,
        "seconds": round(elapsed, 2),
    }


def counters(router: str) -> dict[str, Any]:
    report: dict[str, Any] = httpx.get(f"{router}/ready").json()
    return dict(report["counters"])


def settle_memory(worker: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        state: dict[str, Any] = httpx.get(f"{worker}/v1/memory").json()
        if state["reserved"] == 0 or time.monotonic() > deadline:
            return {"reserved": state["reserved"], "in_flight": state["in_flight"]}
        time.sleep(0.05)


def latency(router: str, body: dict[str, Any], n: int) -> tuple[float, dict[str, str]]:
    samples = []
    headers: dict[str, str] = {}
    with httpx.Client(timeout=60) as client:
        for i in range(n + 3):
            started = time.perf_counter()
            response = client.post(f"{router}/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            if i >= 3:
                samples.append(time.perf_counter() - started)
            headers = {k: v for k, v in response.headers.items() if k.startswith("x-router-fallback")}
    return statistics.median(samples) * 1000, headers


def preflight_cost(n: int) -> dict[str, float]:
    from router.core.config import load_config
    from router.dispatch.chain import Dispatcher
    from router.dispatch.fleet import Endpoint, Fleet, Telemetry
    from router.wire.protocol import ChatCompletionRequest, ChatMessage

    config = load_config(ROOT / "config" / "router.yaml", environ={})
    fleet = Fleet(config, None, None)
    now = time.time()
    fleet._discovered = {
        "large": [
            Endpoint("large", f"http://w{i}/v1", "redis", Telemetry(10**9 * i, 131072, i, 2, 32, 64, 512, now))
            for i in range(4)
        ]
    }
    fleet.redis_ok = True
    dispatcher = Dispatcher(config, {}, fleet)
    request = ChatCompletionRequest([ChatMessage(role="user", content="hello")], max_tokens=256)
    for _ in range(1000):
        dispatcher._plan("large", request, 300)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        dispatcher._plan("large", request, 300)
        samples.append(time.perf_counter() - started)
    return {"p50_us": statistics.median(samples) * 1e6, "p90_us": sorted(samples)[int(0.9 * n)] * 1e6}


def mid_stream_gap(router: str, standin: str, n: int) -> dict[str, float]:
    """A stream to `large` whose stand-in breaks off after 5 words: the gap around the break."""
    gaps, normal = [], []
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            httpx.post(f"{standin}/_standin/script", json=["die:5"])
            body = {"model": "large", "messages": LONG, "stream": True, "max_tokens": 40}
            stamps: list[tuple[float, str]] = []
            with client.stream("POST", f"{router}/v1/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if line:
                        stamps.append((time.perf_counter(), line))
            at = next(i for i, (_, line) in enumerate(stamps) if line.startswith(":"))
            gaps.append(stamps[at + 2][0] - stamps[at - 1][0])  # last token before the break → first token after
            normal.append(stamps[at - 1][0] - stamps[at - 2][0])
    return {"gap_p50_ms": statistics.median(gaps) * 1000, "token_interval_p50_ms": statistics.median(normal) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            remote_port, broken_port, worker_port = free_port(), free_port(), free_port()
            remote = f"http://127.0.0.1:{remote_port}"
            standin_args = ["standin", "--port", str(remote_port), "--name", "remote", "--delay-ms", "50"]
            processes.append(start([*standin_args, "--chunk-delay-ms", "5", "--max-words", "400"], f"{remote}/ready"))
            broken = f"http://127.0.0.1:{broken_port}"
            broken_args = ["standin", "--port", str(broken_port), "--name", "large", "--chunk-delay-ms", "5"]
            processes.append(start(broken_args, f"{broken}/ready"))
            raw = base_config(work, worker_port, remote)
            worker_config = write(work, "worker", raw)
            worker_cmd = ["worker", "--tier", "small", "--config", str(worker_config), "--port", str(worker_port)]
            worker = f"http://127.0.0.1:{worker_port}"
            processes.append(start(worker_cmd, f"{worker}/ready"))

            variants = {
                "pre-flight + fallback (default)": raw,
                "fallback on the worker's refusal only (preflight: false)": {
                    **raw,
                    "routing": {**raw.get("routing", {}), "preflight": False},
                },
                "no fallback (baseline: a plain proxy)": {
                    **raw,
                    "routing": {**raw.get("routing", {}), "preflight": False},
                    "tiers": {**raw["tiers"], "small": {**raw["tiers"]["small"], "fallback": []}},
                },
            }
            results["pressure"] = []
            for i, (label, variant) in enumerate(variants.items()):
                router, url = serve(write(work, f"pressure-{i}", variant))
                try:
                    time.sleep(0.5)
                    row = {"variant": label, **asyncio.run(pressure(url, args.requests))}
                    row["worker_refusals_tried"] = sum(c["value"] for c in counters(url).get("upstream_failures", []))
                    row["preflight_refusals"] = sum(c["value"] for c in counters(url).get("refused", []))
                    row["ledger_after"] = settle_memory(worker)
                finally:
                    router.terminate()
                    router.wait(10)
                results["pressure"].append(row)
                print(json.dumps(row), flush=True)

            results["preflight_cost"] = preflight_cost(20000)
            print(json.dumps({"preflight_cost": results["preflight_cost"]}), flush=True)

            # Failover. A second worker with one batch row of 2,048 tokens: while one long request holds
            # it, a request for 100 more tokens cannot fit, so it is refused by the worker's ledger (503
            # vram_exhausted) or by the router's pre-flight. Small on a dead port: a refused connection.
            tight_port = free_port()
            tight = {**raw, "workers": {**raw["workers"], "small": dict(raw["workers"]["small"])}}
            tight["workers"]["small"].update(port=tight_port, max_batch_size=1, max_seq_len=2048, max_tokens_cap=2000)
            tight_url = f"http://127.0.0.1:{tight_port}"
            tight["tiers"] = {**raw["tiers"], "small": {**raw["tiers"]["small"], "base_url": f"{tight_url}/v1"}}
            tight_config = str(write(work, "tight", tight))
            processes.append(start(["worker", "--tier", "small", "--config", tight_config], f"{tight_url}/ready"))
            dead = {**raw, "tiers": dict(raw["tiers"])}
            dead["tiers"]["small"] = {**raw["tiers"]["small"], "base_url": "http://127.0.0.1:9/v1"}
            dead["tiers"]["large"] = {**raw["tiers"]["large"], "base_url": f"{broken}/v1", "fallback": ["remote"]}
            routers = {
                "dead": serve(write(work, "failover-dead", dead)),
                "reaction": serve(write(work, "failover-503", {**tight, "routing": {"preflight": False}})),
                "preflight": serve(write(work, "failover-preflight", tight)),
            }
            processes += [process for process, _ in routers.values()]
            body = {"messages": LONG, "max_tokens": 100}
            results["failover"] = []
            for label, url, model in [
                ("remote asked directly (baseline)", routers["dead"][1], "remote"),
                ("connection refused -> remote", routers["dead"][1], "small"),
            ]:
                p50, headers = latency(url, {**body, "model": model}, 40)
                results["failover"].append({"path": label, "p50_ms": p50, **headers})
                print(json.dumps(results["failover"][-1]), flush=True)
            for label, key in [
                ("worker 503 vram_exhausted -> remote", "reaction"),
                ("pre-flight -> remote", "preflight"),
            ]:
                hold = {"messages": LONG, "max_tokens": 2000, "ignore_eos": True}
                holder = threading.Thread(  # one long request holds the worker's only row
                    target=httpx.post,
                    args=(f"{tight_url}/v1/chat/completions",),
                    kwargs={"json": hold, "timeout": 300},
                )
                holder.start()
                time.sleep(0.6)
                p50, headers = latency(routers[key][1], {**body, "model": "small"}, 20)
                still_held = httpx.get(f"{tight_url}/v1/memory").json()["reserved"] > 0
                results["failover"].append({"path": label, "p50_ms": p50, **headers, "held_throughout": still_held})
                print(json.dumps(results["failover"][-1]), flush=True)
                holder.join(300)
            url = routers["dead"][1]
            results["mid_stream"] = mid_stream_gap(url, broken, 20)
            print(json.dumps({"mid_stream": results["mid_stream"]}), flush=True)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(10)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"fallback-{stamp}.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
