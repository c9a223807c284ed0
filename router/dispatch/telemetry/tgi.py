"""Text Generation Inference: `/info` (the context window, the batch's token budget, the concurrency limit) and
its Prometheus `/metrics` (the queue, the current batch and the tokens it may grow to).

TGI admits requests into a batch while their tokens fit in `max_batch_total_tokens` (what its KV cache holds,
measured at warm-up); `tgi_batch_current_max_tokens` is what the running batch may reach, so the headroom is the
difference, in tokens. Beyond `max_concurrent_requests` in flight (queued and running) TGI answers 429.

For the queue's predicted wait (router.dispatch.wait), recent means (router.dispatch.telemetry.recent) of:
- the decode step: `tgi_batch_inference_duration{method="decode"}`, the wall time of one decode of the whole batch;
- the answer length: `tgi_request_generated_tokens`, tokens each finished request generated.
The batch limit is `/info`'s `max_batch_size` when set (`--max-batch-size`); otherwise TGI admits by tokens
(`max_batch_total_tokens`) and, as with vLLM, requests queued mean the batch is full now. The prefill rate stays
unknown: the only prompt-size metric, `tgi_request_input_length`, is recorded when a request arrives, not when it
is prefilled, so dividing it by prefill time would overstate the rate exactly while a queue builds up.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from router.dispatch.telemetry import prometheus
from router.dispatch.telemetry.base import MEMORY_UNKNOWN, Reading, TelemetryAdapter, get, json_object
from router.dispatch.telemetry.recent import RecentRatio

STEP = "tgi_batch_inference_duration"
ANSWER = "tgi_request_generated_tokens"


class TgiAdapter(TelemetryAdapter):
    name = "tgi"

    def __init__(self, base_url: str, model: str) -> None:
        super().__init__(base_url, model)
        self._step, self._answer = RecentRatio(), RecentRatio()

    async def read(self, client: httpx.AsyncClient, headers: Mapping[str, str], timeout_s: float) -> Reading:
        info = json_object(await get(client, f"{self.root}/info", headers, timeout_s))
        metrics = await get(client, f"{self.root}/metrics", headers, timeout_s)
        samples = prometheus.parse(metrics.text)
        if "max_total_tokens" not in info:
            raise ValueError(f"{self.root}/info has no max_total_tokens: not a TGI server")
        queued = int(sum(s.value for s in prometheus.named(samples, "tgi_queue_size")))
        running = int(sum(s.value for s in prometheus.named(samples, "tgi_batch_current_size")))
        reading: Reading = {"queue_depth": queued, "running": running, **self._pace(samples)}
        if isinstance(info.get("max_batch_size"), int):
            reading["max_batch_size"] = info["max_batch_size"]
        if isinstance(info["max_total_tokens"], int):
            reading["max_seq_len"] = info["max_total_tokens"]
        limit = info.get("max_concurrent_requests")
        if isinstance(limit, int):
            reading["queue_size"] = max(limit - running, 0)  # queued + running reaching the limit is a 429
        budget = info.get("max_batch_total_tokens")
        taken = sum(s.value for s in prometheus.named(samples, "tgi_batch_current_max_tokens"))
        if not isinstance(budget, int) or budget <= 0:
            note = "TGI: max_batch_total_tokens not reported: memory not checked"
            return {**reading, **MEMORY_UNKNOWN, "note": f"{note}; {self._pace_note(reading)}"}
        free = max(budget - int(taken), 0)
        note = (
            f"TGI: the running batch may reach {int(taken)} of max_batch_total_tokens {budget}, so {free} tokens "
            f"free; free and a request's need are counted in tokens; {self._pace_note(reading)}"
        )
        return {**reading, "free": free, "kv_bytes_per_token": 1, "total": budget, "note": note}

    def _pace(self, samples: list[prometheus.Sample]) -> Reading:
        """The recent decode step and answer length (None until TGI has observed one)."""
        pace: Reading = {}
        step = prometheus.histogram(samples, STEP, method="decode")
        if step is not None:
            pace["step_seconds"] = self._step.update(step[0], step[1], step[1])
        answer = prometheus.histogram(samples, ANSWER)
        if answer is not None:
            pace["mean_completion_tokens"] = self._answer.update(answer[0], answer[1], answer[1])
        return pace

    def _pace_note(self, reading: Reading) -> str:
        step, answer = reading.get("step_seconds"), reading.get("mean_completion_tokens")
        parts = [
            f"decode step {step * 1000:.1f} ms (last {self._step.events} decodes)"
            if step is not None
            else "decode step not measured yet",
            f"answers {answer:.0f} tokens on average" if answer is not None else "no answer finished yet",
            "prefill rate not published",
        ]
        return f"queue: {', '.join(parts)}"
