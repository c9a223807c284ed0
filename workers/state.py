"""What the worker's handlers and heartbeat see: the service once the model is loaded, or why it is not yet."""

from __future__ import annotations

from router.core.workers import WorkerConfig
from workers.errors import NotReady
from workers.metrics import worker_registry
from workers.service import WorkerService


class WorkerState:
    """What the handlers see: the service once the model is loaded, or why it is not there yet."""

    def __init__(self, tier: str, config: WorkerConfig) -> None:
        self.tier = tier
        self.config = config
        self.service: WorkerService | None = None
        self.detail = "loading the model"
        self.registry = worker_registry(tier, lambda: self.service)

    def ready(self) -> WorkerService:
        if self.service is not None and self.service.engine.crashed:
            self.detail = "the generation engine crashed; see the log"
            self.service = None
        if self.service is None:
            raise NotReady(f"the '{self.tier}' worker is not ready: {self.detail}")
        return self.service
