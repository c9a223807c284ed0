"""Memory probes: a worker's own use kept apart from the device's free memory, per accounting method.

CUDA and NVML cannot exist here: `CudaProbe` is driven through its two injected readers (a fake device that
other processes share, and a fake NVML view of it); the simulated GPU is the real one, alone and shared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.ledger import VramLedger
from workers.memory import CONTEXT_CAP, CONTEXT_ESTIMATE, CudaProbe, SimulatedGpu

MB = 1024 * 1024
GB = 1024 * MB
PID = 4242
HOST_PID = 987_654  # what NVML lists for us inside a container


class FakeDevice:
    """One 80 GB GPU: processes hold memory; ours creates its context (`CONTEXT` bytes) on its first query."""

    CONTEXT = 500 * MB

    def __init__(self, others: dict[int, int]) -> None:
        self.total = 80 * GB
        self.others = dict(others)
        self.ours: int | None = None
        self.reserved_bytes = 0

    # CudaCounters
    def context_exists(self) -> bool:
        return self.ours is not None

    def mem_get_info(self) -> tuple[int, int]:
        if self.ours is None:
            self.ours = self.CONTEXT
        return self.total - self.used(), self.total

    def reserved(self) -> int:
        return self.reserved_bytes

    def allocate(self, nbytes: int) -> None:
        self.reserved_bytes += nbytes

    def used(self) -> int:
        return sum(self.others.values()) + (self.ours or 0) + self.reserved_bytes


class FakeNvml:
    """NVML's view of `device`: by our PID, by a host PID, with usage not available, or nothing but the total."""

    def __init__(self, device: FakeDevice, our_pid: int | None = PID, usage: bool = True, lists: bool = True) -> None:
        self.device = device
        self.our_pid = our_pid
        self.usage = usage
        self.lists = lists

    def used_bytes(self) -> int | None:
        return self.device.used()

    def processes(self) -> dict[int, int | None] | None:
        if not self.lists:
            return None
        listed: dict[int, int | None] = {p: (n if self.usage else None) for p, n in self.device.others.items()}
        if self.device.ours is not None and self.our_pid is not None:
            listed[self.our_pid] = self.device.ours + self.device.reserved_bytes if self.usage else None
        return listed


def test_nvml_counts_this_process_alone_whoever_else_holds_memory() -> None:
    device = FakeDevice({111: 7 * GB})  # the other worker, started first
    probe = CudaProbe(device, FakeNvml(device), pid=PID)
    device.allocate(5 * GB)  # our weights
    assert probe.accounting == "nvml"
    assert probe.own_bytes() == 5 * GB + FakeDevice.CONTEXT
    assert probe.free_bytes() == 80 * GB - 7 * GB - 5 * GB - FakeDevice.CONTEXT
    assert probe.context_bytes == FakeDevice.CONTEXT
    device.others[222] = 60 * GB  # a neighbour takes most of the device: free falls, our own use does not move
    assert probe.own_bytes() == 5 * GB + FakeDevice.CONTEXT
    assert probe.free_bytes() == 80 * GB - 67 * GB - 5 * GB - FakeDevice.CONTEXT


def test_in_a_container_we_are_the_one_process_that_appeared_with_our_context() -> None:
    device = FakeDevice({111: 7 * GB})
    probe = CudaProbe(device, FakeNvml(device, our_pid=HOST_PID), pid=PID)
    device.allocate(3 * GB)
    assert probe.accounting == "nvml"
    assert probe.own_bytes() == 3 * GB + FakeDevice.CONTEXT


def test_without_per_process_usage_the_allocator_and_the_measured_context_count() -> None:
    """NVML lists no usage (N/A), or does not list processes: reserved + the context measured at creation."""
    for nvml_kwargs in ({"usage": False}, {"lists": False}, {"our_pid": None}):
        device = FakeDevice({111: 7 * GB})
        probe = CudaProbe(device, FakeNvml(device, **nvml_kwargs), pid=PID)
        device.allocate(2 * GB)
        assert probe.accounting == "allocator+context", nvml_kwargs
        assert probe.context_bytes == FakeDevice.CONTEXT
        assert probe.own_bytes() == 2 * GB + FakeDevice.CONTEXT
        device.others[111] = 20 * GB  # the other process grows: not ours
        assert probe.own_bytes() == 2 * GB + FakeDevice.CONTEXT


def test_a_process_starting_beside_ours_cannot_be_taken_for_us_nor_inflate_the_context_past_the_cap() -> None:
    device = FakeDevice({})

    class Racing(FakeNvml):
        """Another process loads 30 GB in the instant our context is created, and NVML hides our PID."""

        def processes(self) -> dict[int, int | None] | None:
            if device.ours is not None:
                device.others[333] = 30 * GB
            return super().processes()

        def used_bytes(self) -> int | None:
            self.processes()
            return super().used_bytes()

    probe = CudaProbe(device, Racing(device, our_pid=None), pid=PID)
    assert probe.accounting == "allocator+context"
    assert probe.context_bytes == CONTEXT_CAP
    assert probe.own_bytes() == CONTEXT_CAP


def test_without_nvml_the_context_is_an_estimate_and_says_so() -> None:
    device = FakeDevice({111: 7 * GB})
    probe = CudaProbe(device, None, pid=PID)
    device.allocate(GB)
    assert probe.accounting == "allocator+estimate"
    assert probe.own_bytes() == GB + CONTEXT_ESTIMATE
    assert probe.free_bytes() == 80 * GB - 7 * GB - GB - FakeDevice.CONTEXT  # the device's word, not ours


def test_a_context_made_before_the_probe_cannot_be_measured() -> None:
    device = FakeDevice({111: 7 * GB})
    device.mem_get_info()  # something touched CUDA first
    probe = CudaProbe(device, FakeNvml(device, our_pid=None), pid=PID)
    assert probe.accounting == "allocator+estimate"


def test_when_nvml_loses_sight_of_us_the_allocator_view_answers_and_the_accounting_says_so() -> None:
    device = FakeDevice({})
    nvml = FakeNvml(device)
    probe = CudaProbe(device, nvml, pid=PID)
    device.allocate(GB)
    assert (probe.own_bytes(), probe.accounting) == (GB + FakeDevice.CONTEXT, "nvml")
    nvml.lists = False
    assert (probe.own_bytes(), probe.accounting) == (GB + FakeDevice.CONTEXT, "allocator+context")
    nvml.lists = True
    assert probe.own_bytes() == GB + FakeDevice.CONTEXT and probe.accounting == "nvml"


def test_the_ledger_charges_the_share_with_own_use_and_bounds_it_by_device_free() -> None:
    device = FakeDevice({111: 7 * GB})  # another worker's 7 GB
    probe = CudaProbe(device, FakeNvml(device), pid=PID)
    device.allocate(6 * GB)  # weights, graphs and a 4 GB cache
    fixed = probe.own_bytes() - 4 * GB
    ledger = VramLedger(
        probe, kv_bytes_per_token=1, fixed_bytes=fixed, pool_bytes=4 * GB, budget_fraction=0.08, margin_bytes=0
    )
    share = int(80 * GB * 0.08) - fixed  # below the 4 GB pool: the share binds
    snapshot = ledger.snapshot()
    assert snapshot.fixed == 2 * GB + FakeDevice.CONTEXT  # not the other worker's 7 GB
    assert snapshot.budget == share and snapshot.free == share
    assert snapshot.accounting == "nvml" and snapshot.own == 6 * GB + FakeDevice.CONTEXT
    device.others[222] = 80 * GB - device.used() - MB  # a neighbour leaves one MB free
    snapshot = ledger.snapshot()
    assert snapshot.budget == share, "the share is not another process's to take"
    assert snapshot.device_free == MB and snapshot.free == MB


def test_the_simulated_gpu_alone_charges_what_the_worker_allocated() -> None:
    gpu = SimulatedGpu(8 * GB)
    gpu.allocated(GB)
    gpu.external_bytes = 2 * GB
    assert (gpu.own_bytes(), gpu.free_bytes(), gpu.accounting) == (GB, 5 * GB, "simulated")


def test_a_shared_simulated_gpu_keeps_each_process_apart(tmp_path: Path) -> None:
    path = tmp_path / "gpu.json"
    ours = SimulatedGpu(8 * GB, path)
    ours.allocated(GB)
    code = (
        "import sys, time; from pathlib import Path; from workers.memory import SimulatedGpu\n"
        "SimulatedGpu(8 * 2**30, Path(sys.argv[1])).allocated(3 * 2**30); print('up', flush=True); sys.stdin.read()"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    other = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert other.stdout is not None and other.stdout.readline() == b"up\n"
        assert ours.own_bytes() == GB and ours.free_bytes() == 4 * GB
        watcher = SimulatedGpu(8 * GB, path)  # plays another process, which allocates nothing through a worker
        watcher.external_bytes = 2 * GB
        assert ours.external_bytes == 2 * GB
        assert ours.own_bytes() == GB and ours.free_bytes() == 2 * GB
    finally:
        other.communicate(b"")
    assert ours.free_bytes() == 5 * GB, "a process that exited holds nothing (as the driver frees it)"
    with pytest.raises(ValueError, match="simulates a device of"):
        SimulatedGpu(4 * GB, path)
