"""Accelerator memory probes: the device's own view of its memory, behind one interface.

`CudaProbe` asks the driver (`cudaMemGetInfo`); `SimulatedGpu` pretends to be a device of a given
size, so tests and CPU demos exercise the same admission logic; `HostProbe` is for plain CPU runs.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod


class MemoryProbe(ABC):
    kind: str

    @abstractmethod
    def total_bytes(self) -> int: ...

    @abstractmethod
    def free_bytes(self) -> int:
        """What the device reports free now, for anyone (other processes' use included)."""

    def allocated(self, nbytes: int) -> None:
        """Told when the worker takes memory it keeps (weights, caches); real devices notice by themselves."""


class CudaProbe(MemoryProbe):
    kind = "cuda"

    def __init__(self, device_index: int) -> None:
        self._index = device_index

    def total_bytes(self) -> int:
        import torch

        return int(torch.cuda.mem_get_info(self._index)[1])

    def free_bytes(self) -> int:
        import torch

        return int(torch.cuda.mem_get_info(self._index)[0])


class SimulatedGpu(MemoryProbe):
    """A device of `total` bytes: free is total minus what the worker allocated and `external_bytes`.

    Tests raise `external_bytes` to play another process taking memory.
    """

    kind = "simulated"

    def __init__(self, total: int) -> None:
        self._total = total
        self._allocated = 0
        self.external_bytes = 0

    def total_bytes(self) -> int:
        return self._total

    def free_bytes(self) -> int:
        return max(0, self._total - self._allocated - self.external_bytes)

    def allocated(self, nbytes: int) -> None:
        self._allocated += nbytes


class HostProbe(MemoryProbe):
    """Plain CPU runs: the machine's RAM as the device."""

    kind = "host"

    def total_bytes(self) -> int:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def free_bytes(self) -> int:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
