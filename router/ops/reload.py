"""Hot reload: routing rules, classifier thresholds and routing settings, on SIGHUP or when the file changes.

The new file is read and validated in a worker thread; a file that fails validation, or that changes what
only a restart can change (tiers, server, Redis, guardrails, workers, discovery, reload itself, the
classifier's kind, the worker token),
is rejected and the running config stays in force. Applying is one assignment on the event loop, so a
request in flight keeps the decision it already has and the next one uses the new rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio

from router.core.config import Config, ConfigError, load_config

log = logging.getLogger(__name__)
RESTART_ONLY = ("tiers", "server", "redis", "guardrails", "workers", "discovery", "reload")


class Reconfigurable(Protocol):
    """What a reload switches over: the pipeline (router.pipeline.RoutingService)."""

    @property
    def config(self) -> Config: ...

    def apply(self, config: Config) -> None: ...


@dataclass
class ReloadState:
    version: int = 1
    loaded_at: float = 0.0
    last_error: str | None = None
    rejected: int = 0


def restart_only_changes(old: Config, new: Config) -> list[str]:
    changed = [key for key in RESTART_ONLY if getattr(old, key) != getattr(new, key)]
    for key in ("kind", "embedding_weights", "max_chars"):
        if getattr(old.classifier, key) != getattr(new.classifier, key):
            changed.append(f"classifier.{key}")
    if old.auth.worker_token_env != new.auth.worker_token_env:  # read once, by the backends at start-up
        changed.append("auth.worker_token_env")
    return changed


class ConfigReloader:
    def __init__(self, service: Reconfigurable, path: str | Path, environ: dict[str, str] | None = None) -> None:
        self.service = service
        self.path = Path(path)
        self.environ = environ
        self.state = ReloadState(loaded_at=time.time())
        self._lock = asyncio.Lock()
        self._stamp = self._files_stamp()

    async def reload(self) -> bool:
        """Read, validate and apply the file; False (and `state.last_error`) when it is rejected."""
        async with self._lock:
            self._stamp = self._files_stamp()
            try:
                new = await anyio.to_thread.run_sync(lambda: load_config(self.path, self.environ))
                changed = restart_only_changes(self.service.config, new)
                if changed:
                    raise ConfigError(self.path, ", ".join(changed), "changed; restart the router to apply this")
            except ConfigError as exc:
                self.state.last_error, self.state.rejected = str(exc), self.state.rejected + 1
                log.error("config reload rejected, the running config stays: %s", exc)
                return False
            self.service.apply(new)
            self.state.version += 1
            self.state.loaded_at, self.state.last_error = time.time(), None
            log.info("config reloaded from %s (version %d)", self.path, self.state.version)
            return True

    async def watch_forever(self, poll_s: float) -> None:
        """Reload when the file (or its calibration file) changes; mtime and size, polled."""
        while True:
            await asyncio.sleep(poll_s)
            if self._files_stamp() != self._stamp:
                await self.reload()

    def install_sighup(self) -> bool:
        """Reload on SIGHUP; only possible in the main thread's loop (not when served from a test thread)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        except (ValueError, RuntimeError, NotImplementedError):
            return False
        return True

    def remove_sighup(self) -> None:
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    def _files_stamp(self) -> tuple[tuple[float, int], ...]:
        paths = [self.path]
        calibration = self.service.config.classifier.calibration
        if calibration:
            paths.append(self.service.config.resolve_path(calibration))
        stamps = []
        for path in paths:
            try:
                stat = os.stat(path)
                stamps.append((stat.st_mtime, stat.st_size))
            except OSError:
                stamps.append((0.0, -1))
        return tuple(stamps)
