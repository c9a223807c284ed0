"""Accelerator memory probes: the device's free memory and this worker's own use of it, behind one interface.

Two numbers, kept apart on purpose: `free_bytes` is what the device can still give anyone (other processes'
use lowers it), `own_bytes` is what this worker process holds (its budget share is charged with that alone).
`CudaProbe` reads the driver and NVML; `SimulatedGpu` pretends to be a device of a given size, alone or shared
by several worker processes through a small file, so tests and CPU demos exercise the same admission logic;
`HostProbe` is for plain CPU runs.
"""

from __future__ import annotations

import fcntl
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from workers.nvml import NvmlDevice

CONTEXT_ESTIMATE = 512 * 1024 * 1024
"""A CUDA context's size when nothing can measure it (no NVML at all): about what CUDA 12 takes on an H100."""
CONTEXT_CAP = 2 * 1024 * 1024 * 1024
"""A start-up measurement above this is another process's doing, not our context: it is capped."""


class MemoryProbe(ABC):
    kind: str
    """The device: `cuda`, `simulated` or `host`."""

    @property
    def accounting(self) -> str:
        """How `own_bytes` was measured: `nvml`, `allocator+context`, `allocator+estimate`, `simulated` or `host`."""
        return self.kind

    @abstractmethod
    def total_bytes(self) -> int: ...

    @abstractmethod
    def free_bytes(self) -> int:
        """What the device reports free now, for anyone (other processes' use included)."""

    @abstractmethod
    def own_bytes(self) -> int:
        """What this worker process holds on the device now (weights, context, caches), and nothing of others."""

    def allocated(self, nbytes: int) -> None:
        """Told when the worker takes memory it keeps (weights, caches); real devices notice by themselves."""


class CudaCounters(Protocol):
    """What `CudaProbe` reads from CUDA itself (tests inject a fake)."""

    def context_exists(self) -> bool: ...

    def mem_get_info(self) -> tuple[int, int]:
        """(free, total) of the device; the first call creates this process's CUDA context."""

    def reserved(self) -> int:
        """Bytes the caching allocator holds from the driver (`torch.cuda.memory_reserved`)."""


class ProcessMemory(Protocol):
    """What `CudaProbe` reads from NVML (`workers.nvml.NvmlDevice`; tests inject a fake). None: cannot tell."""

    def used_bytes(self) -> int | None: ...

    def processes(self) -> dict[int, int | None] | None: ...


class TorchCuda:
    def __init__(self, device_index: int) -> None:
        self._index = device_index

    def context_exists(self) -> bool:
        import torch

        return bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]

    def mem_get_info(self) -> tuple[int, int]:
        import torch

        free, total = torch.cuda.mem_get_info(self._index)
        return int(free), int(total)

    def reserved(self) -> int:
        import torch

        return int(torch.cuda.memory_reserved(self._index))


class CudaProbe(MemoryProbe):
    """A CUDA device; this process's own use by the first of three methods that works (`accounting` names it).

    - `nvml`: NVML's usage for this process: the context, the allocator's reservations, and what libraries
      take beside the allocator (kernel modules loaded lazily, workspaces). The process is found by its PID, or,
      where NVML reports host PIDs (containers), as the one new process that appeared on the device, holding no
      more than a context, while this probe created our CUDA context.
    - `allocator+context`: `torch.cuda.memory_reserved()` + the context's size, measured once here as NVML's
      device-wide use after creating the context less before (NVML sees the device without one). Kernel modules
      loaded later are not counted; another process allocating in that instant would inflate it (capped at
      CONTEXT_CAP).
    - `allocator+estimate`: no NVML at all: the reservations + CONTEXT_ESTIMATE.

    Create it before anything else in this process touches the device (`build_service` does), or the context
    cannot be measured and the estimate stands in.
    """

    kind = "cuda"

    def __init__(self, cuda: CudaCounters, nvml: ProcessMemory | None, *, pid: int | None = None) -> None:
        self._cuda = cuda
        self._nvml = nvml
        fresh = not cuda.context_exists()
        before = _read(nvml) if fresh else (None, None)
        cuda.mem_get_info()  # creates the context
        used, processes = _read(nvml)
        reserved = cuda.reserved()
        self._pid = _find_self(pid or os.getpid(), before[1], processes)
        own = processes.get(self._pid) if processes is not None and self._pid is not None else None
        if own is not None:
            self._method = "nvml"
            self.context_bytes = max(0, own - reserved)
        elif before[0] is not None and used is not None:
            self._method = "allocator+context"
            self.context_bytes = min(CONTEXT_CAP, max(0, used - before[0] - reserved))
        else:
            self._method = "allocator+estimate"
            self.context_bytes = CONTEXT_ESTIMATE
        self._last = self._method

    @classmethod
    def open(cls, device_index: int) -> CudaProbe:
        return cls(TorchCuda(device_index), NvmlDevice.open(device_index))

    @property
    def accounting(self) -> str:
        return self._last

    def total_bytes(self) -> int:
        return self._cuda.mem_get_info()[1]

    def free_bytes(self) -> int:
        return self._cuda.mem_get_info()[0]

    def own_bytes(self) -> int:
        if self._method == "nvml" and self._nvml is not None:
            used = (self._nvml.processes() or {}).get(self._pid) if self._pid is not None else None
            if used is not None:
                self._last = "nvml"
                return used
        # NVML lost sight of us (or never had it): the allocator's view, with the context measured at start-up.
        self._last = "allocator+context" if self._method != "allocator+estimate" else self._method
        return self._cuda.reserved() + self.context_bytes


def _read(nvml: ProcessMemory | None) -> tuple[int | None, dict[int, int | None] | None]:
    return (None, None) if nvml is None else (nvml.used_bytes(), nvml.processes())


def _find_self(pid: int, before: dict[int, int | None] | None, after: dict[int, int | None] | None) -> int | None:
    """Our PID as NVML lists it: our own, else the only process that appeared holding at most a fresh context."""
    if after is None:
        return None
    if pid in after:
        return pid
    if before is None:
        return None
    new = [p for p, used in after.items() if p not in before and used is not None and used <= CONTEXT_CAP]
    return new[0] if len(new) == 1 and len(after) - len(before) == 1 else None


class SimulatedGpu(MemoryProbe):
    """A device of `total` bytes: free is total minus what workers allocated and `external_bytes`.

    Alone (no `shared_path`), the device is this worker's. With `shared_path`, it is one device shared by every
    process that names the same file, a small JSON ledger kept under an exclusive lock: each process records what
    it allocated under its PID (entries of processes that have exited are dropped, as a driver frees a dead
    process's memory), and `external` plays memory another process holds. Tests raise `external_bytes` (from any
    process, with a probe on the same file) to play another process taking memory.
    """

    kind = "simulated"

    def __init__(self, total: int, shared_path: Path | None = None) -> None:
        self._total = total
        self._path = shared_path
        self._pid = os.getpid()
        self._state: dict[str, Any] = {"total": total, "external": 0, "processes": {}}
        if shared_path is not None:
            shared_path.parent.mkdir(parents=True, exist_ok=True)
            recorded = self._update(lambda state: None)["total"]
            if recorded != total:
                raise ValueError(f"{shared_path} simulates a device of {recorded} bytes, not {total}")

    @property
    def external_bytes(self) -> int:
        return int(self._update(lambda state: None)["external"])

    @external_bytes.setter
    def external_bytes(self, nbytes: int) -> None:
        self._update(lambda state: state.update(external=nbytes))

    def total_bytes(self) -> int:
        return self._total

    def free_bytes(self) -> int:
        state = self._update(lambda state: None)
        return max(0, self._total - int(sum(state["processes"].values())) - int(state["external"]))

    def own_bytes(self) -> int:
        return int(self._update(lambda state: None)["processes"].get(str(self._pid), 0))

    def allocated(self, nbytes: int) -> None:
        def add(state: dict[str, Any]) -> None:
            processes = state["processes"]
            processes[str(self._pid)] = processes.get(str(self._pid), 0) + nbytes

        self._update(add)

    def _update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply `change` to the state (in this process, or in the shared file under its lock); return the state."""
        if self._path is None:
            change(self._state)
            return self._state
        with os.fdopen(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644), "r+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            text = fh.read()
            state: dict[str, Any] = json.loads(text) if text else dict(self._state)
            live = {pid: n for pid, n in state["processes"].items() if _alive(int(pid))}
            state["processes"] = live
            change(state)
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(state))
            return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HostProbe(MemoryProbe):
    """Plain CPU runs: the machine's RAM as the device; own use is what the worker told it it keeps."""

    kind = "host"

    def __init__(self) -> None:
        self._allocated = 0

    def total_bytes(self) -> int:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def free_bytes(self) -> int:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")

    def own_bytes(self) -> int:
        return self._allocated

    def allocated(self, nbytes: int) -> None:
        self._allocated += nbytes
