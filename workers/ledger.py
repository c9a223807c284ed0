"""The VRAM ledger: what each in-flight request may use of the KV-cache budget, reserved up front.

A request reserves its worst case, (prompt tokens + max_tokens) rounded up to whole cache blocks x KV
bytes per token, when it is admitted (the paged cache hands out whole blocks), and releases it when it
ends however it ends. A request that does not fit is refused at
once with the bytes it needs and the bytes free, so the router can send it elsewhere before any
out-of-memory error. The budget is this worker's share of the device (total x budget_fraction) less its own
fixed cost; other processes on the same device never lower it, they lower the device's free memory, which
bounds what may be reserved as well. Thread-safe: the engine thread releases, the event loop reserves.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from workers.memory import MemoryProbe


class VramExhausted(Exception):
    def __init__(self, needed: int, free: int) -> None:
        super().__init__(f"needs {needed} bytes of KV cache, {free} free")
        self.needed = needed
        self.free = free


@dataclass(frozen=True)
class MemorySnapshot:
    device: str
    accounting: str
    """How this worker's own use is measured (workers.memory.MemoryProbe.accounting): nvml, allocator+context,
    allocator+estimate, simulated or host."""
    total: int
    budget: int
    """The KV-cache budget: min(total x budget_fraction - fixed - margin, the cache pool). This worker's share of the
    device; other processes' use does not lower it (it lowers device_free)."""
    fixed: int
    """This worker's own weights, CUDA context, graph pools and workspaces, measured at start-up; nothing of other
    processes'."""
    own: int
    """What this worker process holds on the device now: fixed + the KV-cache pool, and anything transient."""
    reserved: int
    free: int
    """min(ledger_free, device_free): what a new request may reserve now."""
    ledger_free: int
    """budget - reserved."""
    device_free: int
    """What the device still has free, for anyone (other processes' use included), less the margin."""
    margin: int
    kv_bytes_per_token: int
    in_flight: int
    block_size: int = 1
    """Tokens per cache block: a request takes (prompt + max_tokens) rounded up to this."""
    blocks_total: int = 0
    """Blocks of the budget (budget // block bytes)."""
    blocks_free: int = 0
    """Blocks a new request may still reserve (free // block bytes)."""


class VramLedger:
    def __init__(
        self,
        probe: MemoryProbe,
        *,
        kv_bytes_per_token: int,
        fixed_bytes: int,
        pool_bytes: int,
        budget_fraction: float,
        margin_bytes: int,
        block_size: int = 1,
    ) -> None:
        self.probe = probe
        self.kv_bytes_per_token = kv_bytes_per_token
        self.block_size = block_size
        self.fixed_bytes = fixed_bytes
        self.pool_bytes = pool_bytes
        self.budget_fraction = budget_fraction
        self.margin = margin_bytes
        self._reservations: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def budget(self) -> int:
        by_device = int(self.probe.total_bytes() * self.budget_fraction) - self.fixed_bytes - self.margin
        return max(0, min(by_device, self.pool_bytes))

    def bytes_for(self, tokens: int) -> int:
        blocks = -(-tokens // self.block_size)
        return blocks * self.block_size * self.kv_bytes_per_token

    def reserve(self, request_id: str, tokens: int) -> int:
        needed = self.bytes_for(tokens)
        with self._lock:
            free = self._free_locked()
            if needed > free:
                raise VramExhausted(needed, free)
            self._reservations[request_id] = needed
            return needed

    def release(self, request_id: str) -> None:
        with self._lock:
            self._reservations.pop(request_id, None)

    def widen_margin(self, factor: float = 1.5) -> None:
        """After an out-of-memory error: keep more free from now on (up to a quarter of the device)."""
        with self._lock:
            self.margin = min(int(max(self.margin, 64 * 1024 * 1024) * factor), self.probe.total_bytes() // 4)

    def snapshot(self) -> MemorySnapshot:
        with self._lock:
            reserved = sum(self._reservations.values())
            budget = self.budget
            ledger_free = max(0, budget - reserved)
            device_free = max(0, self.probe.free_bytes() - self.margin)
            free = min(ledger_free, device_free)
            block_bytes = self.block_size * self.kv_bytes_per_token
            own = self.probe.own_bytes()  # first: it sets how the probe measured it
            return MemorySnapshot(
                device=self.probe.kind,
                accounting=self.probe.accounting,
                total=self.probe.total_bytes(),
                budget=budget,
                fixed=self.fixed_bytes,
                own=own,
                reserved=reserved,
                free=free,
                ledger_free=ledger_free,
                device_free=device_free,
                margin=self.margin,
                kv_bytes_per_token=self.kv_bytes_per_token,
                in_flight=len(self._reservations),
                block_size=self.block_size,
                blocks_total=budget // block_bytes,
                blocks_free=free // block_bytes,
            )

    def _free_locked(self) -> int:
        reserved = sum(self._reservations.values())
        return max(0, min(self.budget - reserved, self.probe.free_bytes() - self.margin))
