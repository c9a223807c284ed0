"""vLLM: its Prometheus `/metrics` (KV-cache usage, requests running and waiting, the cache's size) and
`max_model_len` from `/v1/models`.

vLLM reports its KV cache only as a fraction in use (`vllm:kv_cache_usage_perc`, `vllm:gpu_cache_usage_perc` before
0.10); its size is `num_gpu_blocks` x `block_size` tokens (the labels of `vllm:cache_config_info`). The free part,
(1 - usage) x size, is the headroom in tokens. With several engines (data parallel, the `engine` label) a request
lands on one of them: the headroom is the largest engine's, the queue and running counts are all engines'.

For the queue's predicted wait (router.dispatch.wait), recent means (router.dispatch.telemetry.recent) of three
histograms vLLM fills, summed over engines:
- the decode step: `vllm:inter_token_latency_seconds` (`vllm:time_per_output_token_seconds` before 0.11), the time
  between a request's successive tokens, which is one engine step at the current batch;
- the prefill rate: `vllm:request_prompt_tokens` over `vllm:request_prefill_time_seconds` (scheduled to first
  token), both observed for the same finished requests. Per request, so prompts prefilled together each count their
  whole time: a lower rate than the engine's (a longer predicted wait), and prefix-cache hits a higher one;
- the answer length: `vllm:request_generation_tokens`, tokens each finished request generated.
vLLM does not publish its batch limit (`max_num_seqs`; `vllm:cache_config_info` carries only the cache's settings)
nor its queued prompts' tokens, so both stay unknown: vLLM takes a waiting request into the batch as soon as a
sequence slot and its KV blocks are free, so requests waiting mean the batch is full now (its capacity is what is
running), which is how the wait model reads a queue without a reported batch size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from router.dispatch.telemetry import prometheus
from router.dispatch.telemetry.base import MEMORY_UNKNOWN, Reading, TelemetryAdapter, get, json_object
from router.dispatch.telemetry.recent import RecentRatio

USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
CACHE_INFO = "vllm:cache_config_info"
STEP = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
PROMPT = "vllm:request_prompt_tokens"
PREFILL = "vllm:request_prefill_time_seconds"
ANSWER = "vllm:request_generation_tokens"


class VllmAdapter(TelemetryAdapter):
    name = "vllm"

    def __init__(self, base_url: str, model: str) -> None:
        super().__init__(base_url, model)
        self._step, self._prefill, self._answer = RecentRatio(), RecentRatio(), RecentRatio()

    async def read(self, client: httpx.AsyncClient, headers: Mapping[str, str], timeout_s: float) -> Reading:
        metrics = await get(client, f"{self.root}/metrics", headers, timeout_s)
        models = json_object(await get(client, f"{self.base_url}/models", headers, timeout_s))
        samples = self._ours(prometheus.parse(metrics.text))
        usage = {s.labels.get("engine", ""): s.value for s in prometheus.named(samples, *USAGE)}
        if not usage:
            raise ValueError(f"{self.root}/metrics has no {USAGE[0]}: not a vLLM server")
        running = sum(s.value for s in prometheus.named(samples, "vllm:num_requests_running"))
        waiting = sum(s.value for s in prometheus.named(samples, "vllm:num_requests_waiting"))
        reading: Reading = {"queue_depth": int(waiting), "running": int(running), **self._pace(samples)}
        window = self._max_model_len(models)
        if window is not None:
            reading["max_seq_len"] = window
        capacity = self._capacity(samples)
        engine = max(usage, key=lambda e: (1.0 - usage[e]) * capacity.get(e, 0))
        size = capacity.get(engine)
        if size is None:
            note = f"vLLM: KV cache {usage[engine]:.0%} used, its size not reported ({CACHE_INFO}): memory not checked"
            return {**reading, **MEMORY_UNKNOWN, "note": f"{note}; {self._pace_note(reading)}"}
        free = int((1.0 - min(max(usage[engine], 0.0), 1.0)) * size)
        note = (
            f"vLLM: KV cache {usage[engine]:.1%} used of {size} tokens ({CACHE_INFO}: num_gpu_blocks x block_size), "
            f"so {free} tokens free; free and a request's need are counted in tokens; {self._pace_note(reading)}"
        )
        return {**reading, "free": free, "kv_bytes_per_token": 1, "total": size, "note": note}

    def _pace(self, samples: list[prometheus.Sample]) -> Reading:
        """The recent decode step, prefill rate and answer length (None until vLLM has observed one)."""
        pace: Reading = {}
        step = prometheus.histogram(samples, *STEP)
        if step is not None:
            pace["step_seconds"] = self._step.update(step[0], step[1], step[1])
        prompt, prefill = prometheus.histogram(samples, PROMPT), prometheus.histogram(samples, PREFILL)
        if prompt is not None and prefill is not None:
            pace["prefill_tokens_per_second"] = self._prefill.update(prompt[0], prefill[0], prefill[1])
        answer = prometheus.histogram(samples, ANSWER)
        if answer is not None:
            pace["mean_completion_tokens"] = self._answer.update(answer[0], answer[1], answer[1])
        return pace

    def _pace_note(self, reading: Reading) -> str:
        step, rate, answer = (
            reading.get(k) for k in ("step_seconds", "prefill_tokens_per_second", "mean_completion_tokens")
        )
        parts = [
            f"decode step {step * 1000:.1f} ms (inter-token latency, last {self._step.events} tokens)"
            if step is not None
            else "decode step not measured yet",
            f"prefill {rate:.0f} tokens/s" if rate is not None else "prefill rate not measured yet",
            f"answers {answer:.0f} tokens on average" if answer is not None else "no answer finished yet",
        ]
        return f"queue: {', '.join(parts)}; max_num_seqs not published: a queue means a full batch"

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
