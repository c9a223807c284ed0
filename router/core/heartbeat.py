"""The worker heartbeat: what a worker publishes in the state store and the router's discovery reads."""

from __future__ import annotations

from typing import Any

import msgspec

WORKERS_PREFIX = "workers:"


class Heartbeat(msgspec.Struct, frozen=True):
    """One worker's record under `<prefix>workers:<tier>:<host>:<port>`, renewed every interval with a TTL."""

    tier: str
    url: str
    """The base URL routers send to (`advertise_url`, else http://host:port/v1)."""
    ready: bool
    detail: str
    at: float
    """Wall-clock time the worker wrote it."""
    memory: dict[str, Any] | None = None
    """The worker's `/v1/memory` reading (free, kv_bytes_per_token, queue, budget...) once it is loaded."""
    queue_depth: int = 0
    running: int = 0
    tokens_per_second: float = 0.0
    step_seconds: float | None = None
    """Recent wall time of one decode step (None before the first); `memory` carries it too, for pre-flight."""
    prefill_tokens_per_second: float | None = None


def worker_key(tier: str, host: str, port: int) -> str:
    return f"{WORKERS_PREFIX}{tier}:{host}:{port}"
