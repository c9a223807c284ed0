"""Per weight shape and decode batch size, the faster of bitsandbytes' two 4-bit matmul paths, measured at start-up.

bitsandbytes (0.50) multiplies by a 4-bit weight either with its fused GEMM kernel, which reads the packed weight
once, or by dequantising the whole weight to bf16 and calling `F.linear`. On an H100 it picks one by a fixed shape
heuristic (`_gemm_4bit_use_custom_cuda`), up to 12% slower than the better path per weight (bench/RESULTS.md).
Here each distinct (out, in) shape of the model's 4-bit layers is timed both ways at each decode bucket's row
count, inside a CUDA graph as decode steps run, and the faster path goes into a table that bitsandbytes' dispatch
consults. The hook is bitsandbytes' own `_gemm_4bit_use_custom_fn`, a Python call made each time a 4-bit matmul is
issued: a captured decode graph bakes in the path chosen while it was captured, a static choice per bucket.
Row counts outside the table (prefill chunks) keep bitsandbytes' heuristic. On the CPU this does nothing.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

Shape = tuple[int, int]
"""(out, in) of a weight, as bitsandbytes' N and K."""
Choice = tuple[int, int, int]
"""(rows, out, in): M, N and K of one matmul."""
PathTimer = Callable[[Shape, int, bool], float]
"""Seconds one matmul of this weight shape takes at this many rows: by the fused kernel (True) or dequantize+linear."""
Heuristic = Callable[[int | None, torch.dtype, int, int, int], bool]
"""bitsandbytes' signature: (device index, dtype, M, N, K) -> use the fused kernel."""


def choose(shapes: Iterable[Shape], rows: Iterable[int], time_path: PathTimer) -> dict[Choice, bool]:
    """For every shape and row count: True where the fused kernel is at least as fast as dequantize+linear."""
    table: dict[Choice, bool] = {}
    for n, k in shapes:
        for m in sorted(set(rows)):
            fused, dequant = time_path((n, k), m, True), time_path((n, k), m, False)
            table[(m, n, k)] = fused <= dequant
    return table


class KernelTable:
    """Stands in for bitsandbytes' heuristic: the measured choice where there is one, its heuristic elsewhere.

    One per process, because bitsandbytes' dispatch is one per process; entries are keyed by device and dtype, so
    two models in one process (both tiers of a benchmark) share it without clashing."""

    def __init__(self, heuristic: Heuristic) -> None:
        self.heuristic = heuristic
        self.choices: dict[tuple[int | None, torch.dtype, int, int, int], bool] = {}

    def __call__(self, device_index: int | None, dtype: torch.dtype, m: int, n: int, k: int) -> bool:
        choice = self.choices.get((device_index, dtype, m, n, k))
        return self.heuristic(device_index, dtype, m, n, k) if choice is None else choice


HOOK = "_gemm_4bit_use_custom_fn"


def install(ops: Any) -> KernelTable | None:
    """Put a `KernelTable` in front of bitsandbytes' heuristic in its CUDA ops module `ops` (once; idempotent).

    None if this bitsandbytes has no such hook (another version): then its heuristic stays."""
    current = getattr(ops, HOOK, None)
    if isinstance(current, KernelTable):
        return current
    if not callable(current):
        log.warning("bitsandbytes has no %s to hook: its own 4-bit kernel heuristic stays", HOOK)
        return None
    table = KernelTable(current)
    setattr(ops, HOOK, table)
    return table


def cuda_ops() -> Any:
    """bitsandbytes' CUDA backend module (importable only where CUDA is)."""
    from bitsandbytes.backends.cuda import ops

    return ops


def four_bit_layers(model: torch.nn.Module) -> dict[Shape, Any]:
    """One 4-bit linear layer per distinct (out, in) weight shape, on a CUDA device."""
    layers: dict[Shape, Any] = {}
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None or module.weight.device.type != "cuda":
            continue
        layers.setdefault((int(state.shape[0]), int(state.shape[1])), module)
    return layers


def measure(
    model: torch.nn.Module,
    rows: Sequence[int],
    *,
    reps: int = 8,
    times: dict[Choice, tuple[float, float]] | None = None,
) -> dict[Choice, bool]:
    """Time both paths for every 4-bit shape of `model` at each row count and make the dispatch take the faster.

    Returns the table (empty on the CPU or without 4-bit layers); `times`, if given, gets the seconds of both paths
    (fused kernel, dequantize+linear) per entry. Takes about a second for a 7B model and five buckets; its transient
    memory is one dequantised weight (the widest, ~270 MB for a 7B's fused gate/up)."""
    layers = four_bit_layers(model)
    if not layers or not torch.cuda.is_available():
        return {}
    table = install(cuda_ops())
    if table is None:
        return {}
    started = time.monotonic()
    try:
        choices = _measure(layers, rows, reps, times)
    except RuntimeError:  # a start-up optimisation: never the reason a worker does not start
        log.exception("could not time the 4-bit matmul paths; bitsandbytes' heuristic stays")
        return {}
    first = next(iter(layers.values()))
    device, dtype = first.weight.device, compute_dtype(first)
    table.choices.update({(device.index, dtype, *key): fused for key, fused in choices.items()})
    torch.cuda.empty_cache()
    log.info(
        "4-bit matmul paths measured in %.1fs (rows x out x in: path): %s",
        time.monotonic() - started,
        ", ".join(f"{m}x{n}x{k}:{'fused' if f else 'dequant'}" for (m, n, k), f in sorted(choices.items())),
    )
    return choices


def _measure(
    layers: dict[Shape, Any], rows: Sequence[int], reps: int, times: dict[Choice, tuple[float, float]] | None
) -> dict[Choice, bool]:
    def time_path(shape: Shape, m: int, fused: bool) -> float:
        seconds = time_layer(layers[shape], m, fused, reps=reps)
        if times is not None:
            old = times.get((m, *shape), (0.0, 0.0))
            times[(m, *shape)] = (seconds, old[1]) if fused else (old[0], seconds)
        return seconds

    return choose(layers, rows, time_path)


def compute_dtype(layer: Any) -> torch.dtype:
    dtype: torch.dtype = getattr(layer, "compute_dtype", None) or torch.bfloat16
    return dtype


def time_layer(layer: Any, rows: int, fused: bool | None, *, reps: int = 8) -> float:
    """Seconds one call of 4-bit `layer` takes on `rows` rows inside a CUDA graph: by the fused kernel (True),
    dequantize+linear (False) or whichever the dispatch picks now (None)."""
    table = install(cuda_ops())
    assert table is not None, "bitsandbytes without the dispatch hook"
    n, k = (int(d) for d in layer.weight.quant_state.shape)
    device, dtype = layer.weight.device, compute_dtype(layer)
    key = (device.index, dtype, rows, n, k)
    saved = table.choices.pop(key, None)
    if fused is not None:
        table.choices[key] = fused
    x = torch.randn(rows, k, device=device, dtype=dtype)
    try:
        with torch.inference_mode():
            return graph_seconds(lambda: layer(x), reps=reps)
    finally:
        table.choices.pop(key, None)
        if saved is not None:
            table.choices[key] = saved


def graph_seconds(fn: Callable[[], Any], *, reps: int, repeats: int = 3) -> float:
    """Seconds per call of `fn`, captured `reps` times in one CUDA graph and replayed (median of `repeats`)."""
    current = torch.cuda.current_stream()
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(current)
    with torch.cuda.stream(side):
        fn()  # warm-up outside capture: library handles and workspaces
    current.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    times: list[float] = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(float(start.elapsed_time(end)) / 1000 / reps)
    del graph
    return statistics.median(times)
