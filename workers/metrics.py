"""The worker's Prometheus metrics, read at scrape time from its ledger and engine."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from workers.service import WorkerService


class _WorkerCollector(Collector):
    def __init__(self, tier: str, service: Callable[[], WorkerService | None]) -> None:
        self._tier = tier
        self._service = service

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        service = self._service()
        up = GaugeMetricFamily("tiered_worker_ready", "1 once the model is loaded", labels=["tier"])
        up.add_metric([self._tier], 1.0 if service is not None else 0.0)
        yield up
        if service is None:
            return
        memory = service.ledger.snapshot()
        stats, pace = service.engine.stats, service.engine.pace
        gauges: dict[str, tuple[str, float]] = {
            "tiered_worker_vram_total_bytes": ("device memory", memory.total),
            "tiered_worker_vram_budget_bytes": ("KV-cache budget", memory.budget),
            "tiered_worker_vram_reserved_bytes": ("reserved by in-flight requests", memory.reserved),
            "tiered_worker_vram_free_bytes": ("free for new requests", memory.free),
            "tiered_worker_kv_blocks_total": ("KV-cache blocks of the budget", memory.blocks_total),
            "tiered_worker_kv_blocks_free": ("KV-cache blocks free for new requests", memory.blocks_free),
            "tiered_worker_kv_block_size_tokens": ("tokens per KV-cache block", memory.block_size),
            "tiered_worker_queue_depth": ("requests waiting for a batch slot", stats.queue_depth),
            "tiered_worker_batch_size": ("requests decoding or prefilling (in a batch slot)", stats.running),
            "tiered_worker_decode_tokens_per_second": ("decode throughput, recent", stats.tokens_per_second),
            "tiered_worker_max_batch_size": ("requests that can decode at once", service.engine.max_batch),
        }
        step, prefill = pace.step_seconds, pace.prefill_cost
        if step is not None:  # absent until the engine has done the work: no made-up zero
            gauges["tiered_worker_decode_step_seconds"] = ("wall time of one decode step, recent mean", step)
        if prefill is not None:
            gauges["tiered_worker_prefill_tokens_per_second"] = (
                "prompt tokens per second of a prefill forward beyond its overhead, recent fit",
                prefill.tokens_per_second,
            )
            gauges["tiered_worker_prefill_overhead_seconds"] = (
                "seconds a prefill forward costs whatever its size, recent fit",
                prefill.overhead_seconds,
            )
        for name, (help_text, value) in gauges.items():
            family = GaugeMetricFamily(name, help_text, labels=["tier"])
            family.add_metric([self._tier], float(value))
            yield family
        tokens = CounterMetricFamily("tiered_worker_decode_tokens", "tokens decoded", labels=["tier"])
        tokens.add_metric([self._tier], float(stats.decode_tokens))
        yield tokens


def worker_registry(tier: str, service: Callable[[], WorkerService | None]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_WorkerCollector(tier, service))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
