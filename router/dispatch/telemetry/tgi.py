"""Text Generation Inference: `/info` (the context window, the batch's token budget, the concurrency limit) and
its Prometheus `/metrics` (the queue, the current batch and the tokens it may grow to).

TGI admits requests into a batch while their tokens fit in `max_batch_total_tokens` (what its KV cache holds,
measured at warm-up); `tgi_batch_current_max_tokens` is what the running batch may reach, so the headroom is the
difference, in tokens. Beyond `max_concurrent_requests` in flight (queued and running) TGI answers 429.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from router.dispatch.telemetry import prometheus
from router.dispatch.telemetry.base import MEMORY_UNKNOWN, Reading, TelemetryAdapter, get, json_object


class TgiAdapter(TelemetryAdapter):
    name = "tgi"

    async def read(self, client: httpx.AsyncClient, headers: Mapping[str, str], timeout_s: float) -> Reading:
        info = json_object(await get(client, f"{self.root}/info", headers, timeout_s))
        metrics = await get(client, f"{self.root}/metrics", headers, timeout_s)
        samples = prometheus.parse(metrics.text)
        if "max_total_tokens" not in info:
            raise ValueError(f"{self.root}/info has no max_total_tokens: not a TGI server")
        queued = int(sum(s.value for s in prometheus.named(samples, "tgi_queue_size")))
        running = int(sum(s.value for s in prometheus.named(samples, "tgi_batch_current_size")))
        reading: Reading = {"queue_depth": queued, "running": running}
        if isinstance(info["max_total_tokens"], int):
            reading["max_seq_len"] = info["max_total_tokens"]
        limit = info.get("max_concurrent_requests")
        if isinstance(limit, int):
            reading["queue_size"] = max(limit - running, 0)  # queued + running reaching the limit is a 429
        budget = info.get("max_batch_total_tokens")
        taken = sum(s.value for s in prometheus.named(samples, "tgi_batch_current_max_tokens"))
        if not isinstance(budget, int) or budget <= 0:
            note = "TGI: max_batch_total_tokens not reported: memory not checked"
            return {**reading, **MEMORY_UNKNOWN, "note": note}
        free = max(budget - int(taken), 0)
        note = (
            f"TGI: the running batch may reach {int(taken)} of max_batch_total_tokens {budget}, so {free} tokens "
            "free; free and a request's need are counted in tokens"
        )
        return {**reading, "free": free, "kv_bytes_per_token": 1, "total": budget, "note": note}
