"""One GPU as NVML (the driver's management library, `nvidia-smi`'s source) sees it: device-wide use and each process's.

NVML needs no CUDA context, so it can look at the device before this process has one. Every reading answers
None when NVML cannot tell (no library, no driver, a MIG slice, a value reported as not available) and the
caller falls back; nothing here raises.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


class NvmlDevice:
    """The NVML handle of the GPU that CUDA calls `cuda_index` in this process."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle

    @classmethod
    def open(cls, cuda_index: int) -> NvmlDevice | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            index = _nvml_index(pynvml, cuda_index)
            if index is None:
                return None
            return cls(pynvml, pynvml.nvmlDeviceGetHandleByIndex(index))
        except Exception as exc:  # any NVML failure (no library, no driver, no such device) means "cannot tell"
            log.info("NVML cannot see cuda:%d (%s): own memory is counted without it", cuda_index, exc)
            return None

    def used_bytes(self) -> int | None:
        """What the whole device has in use, every process and the driver's own reservation included."""
        try:
            return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        except Exception:
            return None

    def processes(self) -> dict[int, int | None] | None:
        """PID (as NVML reports it: the host's, inside most containers) -> bytes used (None where not available)."""
        try:
            listed = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception:
            return None
        return {int(p.pid): (None if p.usedGpuMemory is None else int(p.usedGpuMemory)) for p in listed}


def _nvml_index(nvml: Any, cuda_index: int) -> int | None:
    """CUDA numbers only the GPUs in CUDA_VISIBLE_DEVICES (by index or UUID prefix); NVML numbers them all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return cuda_index
    entries = [entry.strip() for entry in visible.split(",")]
    if cuda_index >= len(entries):
        return None
    entry = entries[cuda_index]
    if entry.isdigit():
        return int(entry)
    if entry.startswith("MIG-"):
        return None  # per-process use of a MIG slice is not the whole device's view: fall back
    for index in range(int(nvml.nvmlDeviceGetCount())):
        uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(index))
        if str(uuid).startswith(entry if entry.startswith("GPU-") else f"GPU-{entry}"):
            return index
    return None
