"""What the `/health` benchmarks share: polling `/health` for latency, and a percentile."""

from __future__ import annotations

import asyncio
import time

import httpx


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def poll_health(url: str, until: float) -> list[float]:
    """`GET /health` every 20 ms until `until` (monotonic); each answer's latency in ms."""
    latencies = []
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < until:
            started = time.perf_counter()
            response = await client.get(f"{url}/health")
            response.raise_for_status()
            latencies.append(1000 * (time.perf_counter() - started))
            await asyncio.sleep(0.02)
    return latencies
