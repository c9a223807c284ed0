"""`/health` while clients abuse the router's connections (issue 17 point 3): `--slow` connections that trickle
their headers a byte a second (each closed by the router at `server.header_timeout_s` and opened again at once, so
that many are always open) and `--streams` streams held open on the small tier (a stand-in that sends a word every
`--chunk-ms`), against `/health` with nothing else running, in the same run.

Also, every 0.5 s, a plain request to the remote tier: one tier's held connections must not starve another's.

Stand-ins play the tiers (own processes, `tiered-router standin`); the router is `tiered-router serve` with the
shipped config, the small tier's pool sized for the held streams (`tiers.small.max_connections`).

    python bench/health_under_abuse.py [--slow 300] [--streams 256] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.health import percentile, poll_health  # noqa: E402
from bench.processes import start  # noqa: E402
from router.supervisor import wait_ready  # noqa: E402
from tests.servers import free_port  # noqa: E402

SLOW_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 2),
        "p99": round(percentile(values, 0.99), 2),
        "max": round(max(values), 2),
        "n": len(values),
    }


async def slow_connection(port: int, until: float, seen: Counter[str]) -> None:
    """Keep one trickling connection open until `until`, reconnecting whenever the router closes it."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            seen["connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        seen["opened"] += 1
        writer.write(SLOW_HEAD)
        try:
            while time.monotonic() < until:
                writer.write(b"x")  # a header name that never ends
                await writer.drain()
                try:
                    answer = await asyncio.wait_for(reader.read(64), timeout=1.0)
                except TimeoutError:
                    continue
                seen["408" if answer.startswith(b"HTTP/1.1 408") else "closed"] += 1
                break
        except OSError:
            seen["closed"] += 1
        finally:
            writer.close()


async def held_stream(client: httpx.AsyncClient, url: str, until: float, seen: Counter[str]) -> None:
    body = {"model": "small", "stream": True, "messages": [{"role": "user", "content": "tell me a long story " * 20}]}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        seen[f"stream_{response.status_code}"] += 1
        if response.status_code != 200:
            return
        seen["open"] += 1
        try:
            async for _ in response.aiter_lines():
                if time.monotonic() > until:
                    break
        finally:
            seen["open"] -= 1


async def remote_requests(url: str, until: float) -> tuple[list[float], Counter[int]]:
    body = {"model": "remote", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    seconds: list[float] = []
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < until:
            started = time.perf_counter()
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            seconds.append(1000 * (time.perf_counter() - started))
            statuses[response.status_code] += 1
            await asyncio.sleep(0.5)
    return seconds, statuses


async def drive(url: str, port: int, slow: int, streams: int, seconds: float) -> dict[str, Any]:
    idle = await poll_health(url, time.monotonic() + 3)
    idle_remote, _ = await remote_requests(url, time.monotonic() + 3)
    until = time.monotonic() + seconds + 15  # the abuse outlasts the measurement
    slow_seen: Counter[str] = Counter()
    stream_seen: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=streams + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, pool=60), limits=limits) as client:
        abuse = [asyncio.create_task(slow_connection(port, until, slow_seen)) for _ in range(slow)]
        abuse += [asyncio.create_task(held_stream(client, url, until, stream_seen)) for _ in range(streams)]
        await asyncio.sleep(5)  # everything connected and streaming before measuring
        at_start = {"slow_opened": slow_seen["opened"], "streams_open": stream_seen["open"]}
        measured_until = time.monotonic() + seconds
        loaded, (remote, remote_statuses) = await asyncio.gather(
            poll_health(url, measured_until), remote_requests(url, measured_until)
        )
        at_end = {"streams_open": stream_seen["open"]}
        for task in abuse:
            task.cancel()
        await asyncio.gather(*abuse, return_exceptions=True)
    return {
        "health_idle_ms": summary(idle),
        "health_loaded_ms": summary(loaded),
        "remote_idle_ms": summary(idle_remote),
        "remote_loaded_ms": summary(remote),
        "remote_statuses": dict(remote_statuses),
        "slow_connections": dict(slow_seen),
        "streams": {k: v for k, v in stream_seen.items() if k != "open"},
        "at_start": at_start,
        "at_end": at_end,
        "slow": slow,
        "held_streams": streams,
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", type=int, default=300)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--chunk-ms", type=float, default=500.0, help="the small stand-in's gap between words")
    args = parser.parse_args()
    raw: dict[str, Any] = yaml.safe_load((ROOT / "config" / "router.yaml").read_text())
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for tier in ("small", "large", "remote"):
            port = free_port()
            extra = ["--chunk-delay-ms", str(args.chunk_ms), "--max-words", "400"] if tier == "small" else []
            command = ["standin", "--port", str(port), "--name", tier, *extra]
            processes.append(start(command, f"http://127.0.0.1:{port}/ready"))
            raw["tiers"][tier]["base_url"] = f"http://127.0.0.1:{port}/v1"
        raw["tiers"]["remote"]["api_key_env"] = None
        raw["tiers"]["small"]["max_connections"] = args.streams + 8
        raw["tiers"]["small"]["timeouts"] = {**raw["tiers"]["small"].get("timeouts", {}), "total": 600.0}
        raw["guardrails"]["path"] = str(ROOT / "config" / "guardrails")
        raw.pop("workers", None)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "router.yaml"
            path.write_text(yaml.safe_dump(raw))
            port = free_port()
            env = {**os.environ, "NEMO_GUARDRAILS_NO_USAGE_STATS": "1"}
            command = [sys.executable, "-m", "router.cli", "serve", "--config", str(path), "--port", str(port)]
            router = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            processes.append(router)
            url = f"http://127.0.0.1:{port}"
            if not wait_ready(f"{url}/health", time.monotonic() + 120):
                raise RuntimeError("the router did not come up")
            result = asyncio.run(drive(url, port, args.slow, args.streams, args.seconds))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:  # a stand-in still draining held streams
                process.kill()
                process.wait(10)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(json.dumps({"commit": commit.stdout.strip(), **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
