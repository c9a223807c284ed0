"""Telemetry adapters: read a tier's serving engine (our workers, vLLM, TGI, Ollama) for pre-flight.

Each adapter turns what its engine publishes into the shape of our workers' `/v1/memory` reading (`free`,
`kv_bytes_per_token`, `queue_depth`, `running`, `queue_size`, `max_seq_len`, `total`, and a `note` saying how it
was derived), which the fleet parses into `router.dispatch.fleet.Telemetry`. An engine that counts its KV cache in
tokens, not bytes, is read with `kv_bytes_per_token: 1`: `free` and what a request needs are then both tokens.
An engine that reports no memory at all is read with both at 0, so memory never refuses a request there (its
context window and queue still count). Chosen per tier by `tiers.<name>.telemetry` (router.core.config).
"""

from router.dispatch.telemetry.base import Reading, TelemetryAdapter
from router.dispatch.telemetry.registry import adapter_for

__all__ = ["Reading", "TelemetryAdapter", "adapter_for"]
