"""The worker's errors, rendered in the OpenAI error shape by the same handlers as the router's.

    RouterError (router.wire.errors)
    ├── InvalidRequest           400  (shared with the router)
    └── WorkerUnavailable        503  retry elsewhere: the router falls back on these
        ├── VramRefused               code vram_exhausted, with needed_bytes and free_bytes
        ├── QueueFullError            code queue_full, with Retry-After
        ├── NotReady                  code not_ready (still loading)
        └── GenerationFailed          code generation_failed

Engine exceptions (`VramExhausted`, `QueueFull`, `EngineError`) are translated here.
"""

from __future__ import annotations

from router.wire.errors import RouterError
from router.wire.protocol import ErrorBody, ErrorDetail
from workers.engine import EngineError, QueueFull
from workers.ledger import VramExhausted


class VramErrorDetail(ErrorDetail):
    needed_bytes: int = 0
    free_bytes: int = 0


class WorkerUnavailable(RouterError):
    status_code = 503
    error_type = "server_error"
    code = "unavailable"
    retry_after: str | None = None

    def headers(self) -> dict[str, str]:
        return {"retry-after": self.retry_after} if self.retry_after else {}


class VramRefused(WorkerUnavailable):
    code = "vram_exhausted"

    def __init__(self, needed: int, free: int) -> None:
        super().__init__(f"not enough GPU memory for this request: needs {needed} bytes of KV cache, {free} free")
        self.needed, self.free = needed, free

    def body(self) -> ErrorBody:
        return ErrorBody(VramErrorDetail(self.message, self.error_type, None, self.code, self.needed, self.free))


class QueueFullError(WorkerUnavailable):
    code = "queue_full"
    retry_after = "1"


class NotReady(WorkerUnavailable):
    code = "not_ready"
    retry_after = "5"


class GenerationFailed(WorkerUnavailable):
    code = "generation_failed"


def from_engine_error(error: Exception) -> RouterError:
    if isinstance(error, VramExhausted):
        return VramRefused(error.needed, error.free)
    if isinstance(error, QueueFull):
        return QueueFullError(f"the worker's queue is full: {error}")
    if isinstance(error, RouterError):
        return error
    if isinstance(error, EngineError):
        return GenerationFailed(str(error))
    return GenerationFailed(f"generation failed: {type(error).__name__}")
