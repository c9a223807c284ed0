"""Readiness and the live status: each tier's probe, the state store, discovery's view of the workers, counters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from router.core.config import Config
from router.core.state import StateStore, StateUnavailable
from router.dispatch.backends import TierBackend
from router.dispatch.chain import Dispatcher
from router.dispatch.fleet import Fleet
from router.dispatch.wait import predicted_wait
from router.ops.metrics import Observer
from router.ops.reload import ReloadState

ROUTED_COUNTS = "routed"
READY_CACHE_S = 2.0
"""`/status` refreshes every second; tier probes are redone at most this often."""


class StatusReporter:
    """What `/ready`, `/status.json` and the readiness part of `/metrics` report."""

    def __init__(
        self,
        backends: Mapping[str, TierBackend],
        store: StateStore,
        classifier_name: str,
        fleet: Fleet | None,
        dispatcher: Dispatcher,
        observer: Observer,
        config: Callable[[], tuple[Config, float, ReloadState | None]],
    ) -> None:
        self.backends = dict(backends)
        self.store = store
        self.classifier_name = classifier_name
        self.fleet = fleet
        self.dispatcher = dispatcher
        self.observer = observer
        self._config = config
        """The running config, the rules' threshold and the reloader's state (they change on reload)."""
        self._probed: tuple[float, list[tuple[bool, str]]] | None = None
        self._probing = asyncio.Lock()

    async def probes(self) -> list[tuple[bool, str]]:
        """Each tier's probe, redone at most every READY_CACHE_S however often `/ready` is asked, one round at a
        time: a remote tier is sent its key no more often than that, whoever polls."""
        async with self._probing:
            now = time.monotonic()
            if self._probed is None or now - self._probed[0] > READY_CACHE_S:
                self._probed = (now, list(await asyncio.gather(*(b.probe() for b in self.backends.values()))))
            return self._probed[1]

    async def summary(self) -> dict[str, object]:
        """What anyone may read of readiness: ready or not, per tier too; no URL, name, key or config text."""
        probes = await self.probes()
        tiers = {name: {"ready": ok} for name, (ok, _) in zip(self.backends, probes, strict=True)}
        return {"ready": any(ok for ok, _ in probes), "tiers": tiers}

    async def readiness(self) -> dict[str, object]:
        probes = await self.probes()
        tiers = {
            name: {"ready": ok, "detail": detail, "kind": b.config.kind, "url": b.config.base_url}
            for (name, b), (ok, detail) in zip(self.backends.items(), probes, strict=True)
        }
        store_ok = await self.store.ping()
        routed: dict[str, int] = {}
        if store_ok:
            try:
                routed = await self.store.read_counts(ROUTED_COUNTS)
            except StateUnavailable:
                store_ok = False
        return {
            "ready": any(t["ready"] for t in tiers.values()),
            "tiers": tiers,
            "state": {"backend": self.store.backend, "ready": store_ok, "routed": routed},
            "classifier": self.classifier_name,
            "workers": self._workers(),
            "discovery": {"rejected": dict(self.fleet.rejected) if self.fleet is not None else {}},
            "counters": self.dispatcher.stats(),
            "config": self._config_state(),
        }

    def _config_state(self) -> dict[str, object]:
        config, threshold, state = self._config()
        return {
            "source": config.source,
            "version": state.version if state else 1,
            "loaded_at": state.loaded_at if state else None,
            "last_error": state.last_error if state else None,
            "rejected": state.rejected if state else 0,
            "rules": [rule.name for rule in config.rules],
            "threshold": threshold,
        }

    def _workers(self) -> dict[str, list[dict[str, object]]]:
        """What discovery knows of each worker tier: where, from which source, how fresh, how full."""
        if self.fleet is None:
            return {}
        found: dict[str, list[dict[str, object]]] = {}
        for tier in self.fleet.watched_tiers:
            source = self.fleet.config.tiers[tier].telemetry_source()
            ours = source == "ours"
            for endpoint in self.fleet.endpoints(tier):
                t = self.fleet.fresh(endpoint)
                found.setdefault(tier, []).append(
                    {
                        "url": endpoint.base_url,
                        "source": endpoint.source,
                        "fresh": t is not None,
                        "free_bytes": t.free if t else None,
                        # Other engines count their KV cache in tokens (router.dispatch.telemetry), or report no
                        # memory at all (0 per token): the status page says which instead of drawing 0% used.
                        "memory_unit": (None if not t or not t.kv_bytes_per_token else "bytes" if ours else "tokens"),
                        "total_bytes": t.total if t else None,
                        "budget": t.budget if t else None,
                        "reserved": t.reserved if t else None,
                        "queue_depth": t.queue_depth if t else None,
                        "queue_size": t.queue_size if t else None,
                        "running": t.running if t else None,
                        "max_batch_size": t.max_batch_size if t else None,
                        "step_seconds": t.step_seconds if t else None,
                        "prefill_tokens_per_second": t.prefill_tokens_per_second if t else None,
                        "prefill_overhead_seconds": t.prefill_overhead_seconds if t else None,
                        # What a request with a short prompt would wait now (pre-flight's estimate).
                        "queue_wait_s": predicted_wait(t, 0, self.fleet.sent_since(endpoint)) if t else None,
                        "telemetry": source,
                        "note": t.note if t else None,
                    }
                )
        return found

    async def status(self) -> dict[str, object]:
        """What `/status` draws: tiers with their workers, the routing mix, latency and recent events."""
        ready = await self.readiness()
        workers = self._workers()
        tiers = [
            {
                "name": name,
                "kind": t["kind"],
                "ready": t["ready"],
                "detail": t["detail"],
                "workers": workers.get(name, []),
            }
            for name, t in ready["tiers"].items()  # type: ignore[attr-defined]
        ]
        return {"tiers": tiers, "counters": self.dispatcher.stats(), **self.observer.summary()}
