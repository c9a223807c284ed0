"""vLLM: its Prometheus `/metrics` (KV-cache usage, requests running and waiting, the cache's size) and
`max_model_len` from `/v1/models`.

vLLM reports its KV cache only as a fraction in use (`vllm:kv_cache_usage_perc`, `vllm:gpu_cache_usage_perc` before
0.10); its size is `num_gpu_blocks` x `block_size` tokens (the labels of `vllm:cache_config_info`). The free part,
(1 - usage) x size, is the headroom in tokens. With several engines (data parallel, the `engine` label) a request
lands on one of them: the headroom is the largest engine's, the queue and running counts are all engines'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from router.dispatch.telemetry import prometheus
from router.dispatch.telemetry.base import MEMORY_UNKNOWN, Reading, TelemetryAdapter, get, json_object

USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
CACHE_INFO = "vllm:cache_config_info"


class VllmAdapter(TelemetryAdapter):
    name = "vllm"

    async def read(self, client: httpx.AsyncClient, headers: Mapping[str, str], timeout_s: float) -> Reading:
        metrics = await get(client, f"{self.root}/metrics", headers, timeout_s)
        models = json_object(await get(client, f"{self.base_url}/models", headers, timeout_s))
        samples = self._ours(prometheus.parse(metrics.text))
        usage = {s.labels.get("engine", ""): s.value for s in prometheus.named(samples, *USAGE)}
        if not usage:
            raise ValueError(f"{self.root}/metrics has no {USAGE[0]}: not a vLLM server")
        running = sum(s.value for s in prometheus.named(samples, "vllm:num_requests_running"))
        waiting = sum(s.value for s in prometheus.named(samples, "vllm:num_requests_waiting"))
        reading: Reading = {"queue_depth": int(waiting), "running": int(running)}
        window = self._max_model_len(models)
        if window is not None:
            reading["max_seq_len"] = window
        capacity = self._capacity(samples)
        engine = max(usage, key=lambda e: (1.0 - usage[e]) * capacity.get(e, 0))
        size = capacity.get(engine)
        if size is None:
            note = f"vLLM: KV cache {usage[engine]:.0%} used, its size not reported ({CACHE_INFO}): memory not checked"
            return {**reading, **MEMORY_UNKNOWN, "note": note}
        free = int((1.0 - min(max(usage[engine], 0.0), 1.0)) * size)
        note = (
            f"vLLM: KV cache {usage[engine]:.1%} used of {size} tokens ({CACHE_INFO}: num_gpu_blocks x block_size), "
            f"so {free} tokens free; free and a request's need are counted in tokens"
        )
        return {**reading, "free": free, "kv_bytes_per_token": 1, "total": size, "note": note}

    def _ours(self, samples: list[prometheus.Sample]) -> list[prometheus.Sample]:
        """Without other models' samples, when the server labels them by model and serves the tier's (samples
        with no model label, such as the cache's size, are kept)."""
        if not any(s.labels.get("model_name") == self.model for s in samples):
            return samples
        return [s for s in samples if s.labels.get("model_name", self.model) == self.model]

    def _capacity(self, samples: list[prometheus.Sample]) -> dict[str, int]:
        """Each engine's KV cache size in tokens, from the labels of `vllm:cache_config_info`."""
        sizes: dict[str, int] = {}
        for sample in prometheus.named(samples, CACHE_INFO):
            try:
                blocks, block = int(sample.labels["num_gpu_blocks"]), int(sample.labels["block_size"])
            except (KeyError, ValueError):  # "None" before the engine has profiled its memory
                continue
            sizes[sample.labels.get("engine", "")] = blocks * block
        return sizes

    def _max_model_len(self, models: dict[str, Any]) -> int | None:
        data = models.get("data")
        cards = [c for c in data if isinstance(c, dict)] if isinstance(data, list) else []
        card = next((c for c in cards if c.get("id") == self.model), cards[0] if cards else None)
        value = card.get("max_model_len") if card else None
        return value if isinstance(value, int) and value > 0 else None
