"""Loopback stand-ins for other serving engines: the chat stand-in (router.devtools.standin) plus the telemetry
pages a vLLM, TGI or Ollama server publishes, in their shape (`/metrics` in Prometheus text, `/v1/models`, `/info`,
`/api/ps`), changeable while they run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from router.devtools.standin import Receive, Scope, Send, Standin, StandinSettings

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"


@dataclass
class EngineStandin:
    """Answers GETs of `pages` (path -> (content type, body)); everything else goes to the chat stand-in."""

    chat: Standin
    pages: dict[str, tuple[str, str]] = field(default_factory=dict)
    api_key: str | None = None
    """When set, pages under /v1 need `Authorization: Bearer <it>` (as `vllm serve --api-key` guards /v1/models)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        page = self.pages.get(scope.get("path", "")) if scope["type"] == "http" else None
        if page is None or scope["method"] != "GET":
            await self.chat(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"authorization", b"").decode()
        status = 200
        if self.api_key is not None and scope["path"].startswith("/v1/") and sent != f"Bearer {self.api_key}":
            status, page = 401, (JSON, json.dumps({"error": "Unauthorized"}))
        headers = [(b"content-type", page[0].encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": page[1].encode()})


def vllm_pages(
    model: str,
    *,
    usage: float,
    blocks: int | None,
    block_size: int = 16,
    running: int = 0,
    waiting: int = 0,
    max_model_len: int = 8192,
    engines: int = 1,
) -> dict[str, tuple[str, str]]:
    """What `vllm serve` 0.10+ publishes: its metrics page (a few of its gauges, a histogram and process metrics
    beside them, as a real page has) and its model list."""
    labels = [f'engine="{e}",model_name="{model}"' for e in range(engines)]
    gpu_blocks = "None" if blocks is None else str(blocks)
    lines = [
        "# HELP python_gc_objects_collected_total Objects collected during gc",
        "# TYPE python_gc_objects_collected_total counter",
        'python_gc_objects_collected_total{generation="0"} 1234.0',
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        *(f"vllm:num_requests_running{{{lab}}} {float(running)}" for lab in labels),
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        *(f"vllm:num_requests_waiting{{{lab}}} {float(waiting)}" for lab in labels),
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        *(f"vllm:kv_cache_usage_perc{{{lab}}} {usage}" for lab in labels),
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
        "# TYPE vllm:cache_config_info gauge",
        *(
            f'vllm:cache_config_info{{block_size="{block_size}",cache_dtype="auto",enable_prefix_caching="True",'
            f'engine="{e}",gpu_memory_utilization="0.9",num_cpu_blocks="None",num_gpu_blocks="{gpu_blocks}",'
            f'num_gpu_blocks_override="None",sliding_window="None"}} 1.0'
            for e in range(engines)
        ),
        "# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.",
        "# TYPE vllm:e2e_request_latency_seconds histogram",
        f'vllm:e2e_request_latency_seconds_bucket{{engine="0",le="0.3",model_name="{model}"}} 0.0',
        f'vllm:e2e_request_latency_seconds_bucket{{engine="0",le="+Inf",model_name="{model}"}} 3.0',
        f'vllm:e2e_request_latency_seconds_sum{{engine="0",model_name="{model}"}} 4.5',
    ]
    card = {
        "id": model,
        "object": "model",
        "created": 1,
        "owned_by": "vllm",
        "root": model,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [],
    }
    return {
        "/metrics": (PROMETHEUS, "\n".join(lines) + "\n"),
        "/v1/models": (JSON, json.dumps({"object": "list", "data": [card]})),
    }


def tgi_pages(
    *,
    budget: int | None,
    batch_max_tokens: int,
    queued: int = 0,
    batch_size: int = 0,
    max_total_tokens: int = 4096,
    max_concurrent_requests: int = 128,
) -> dict[str, tuple[str, str]]:
    """What text-generation-launcher publishes: `/info` (TGI 3's, the backend's fields flattened in) and metrics."""
    info: dict[str, Any] = {
        "model_id": "Qwen/Qwen2.5-7B-Instruct",
        "model_sha": None,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": max_concurrent_requests,
        "max_best_of": 2,
        "max_stop_sequences": 4,
        "max_input_tokens": max_total_tokens - 1,
        "max_total_tokens": max_total_tokens,
        "validation_workers": 2,
        "max_client_batch_size": 4,
        "router": "text-generation-router",
        "version": "3.3.4",
        "sha": None,
        "docker_label": None,
        "model_device_type": "cuda",
        "model_dtype": "torch.bfloat16",
        "speculate": 0,
        "waiting_served_ratio": 0.3,
        "max_waiting_tokens": 20,
        "max_batch_size": None,
        "support_chunking": True,
        "prefix_caching": True,
        "attention_impl": "flashinfer",
        "block_size": 1,
    }
    if budget is not None:
        info["max_batch_total_tokens"] = budget
    lines = [
        "# TYPE tgi_queue_size gauge",
        f"tgi_queue_size {queued}",
        "# TYPE tgi_batch_current_size gauge",
        f"tgi_batch_current_size {batch_size}",
        "# TYPE tgi_batch_current_max_tokens gauge",
        f"tgi_batch_current_max_tokens {batch_max_tokens}",
        "# TYPE tgi_request_count counter",
        "tgi_request_count 42",
    ]
    return {"/info": (JSON, json.dumps(info)), "/metrics": (PROMETHEUS, "\n".join(lines) + "\n")}


def ollama_pages(loaded: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """`/api/ps` of an Ollama server holding `loaded` (name, size, size_vram, context_length each)."""
    models = [
        {
            "name": m["name"],
            "model": m["name"],
            "size": m["size"],
            "size_vram": m["size_vram"],
            "digest": "a" * 64,
            "expires_at": "2026-12-06T02:00:00Z",
            "details": {"format": "gguf", "family": "llama", "parameter_size": "8.0B", "quantization_level": "Q4_0"},
            **({"context_length": m["context_length"]} if "context_length" in m else {}),
        }
        for m in loaded
    ]
    return {"/api/ps": (JSON, json.dumps({"models": models}))}


def engine(name: str, pages: dict[str, tuple[str, str]]) -> EngineStandin:
    return EngineStandin(Standin(StandinSettings(name=name)), pages)
