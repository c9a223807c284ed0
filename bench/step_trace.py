"""Attributes the device time in a torch.profiler trace (Chrome JSON) to the parts of a decode step.

Forward hooks (`mark_parts`) wrap each module kind in a `part:<name>` profiler range; a kernel belongs to the
innermost range around the host call that launched it (found through the launch's correlation id). Kernels a CUDA
graph replays were all launched by one `cudaGraphLaunch`, inside no range: they are attributed by kernel name, in
the proportions that name had in an eager window of the same model (`name_map`). Without a device (the CPU smoke
run), the leaf CPU ops of the profiled thread stand in for kernels.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

ENGINE = "engine: sampling, copies"
UNMAPPED = "graph: kernels unseen eagerly"
PARTS = ("matmul", "lm_head", "attention", "attention: other", "norm", "rotary", "mlp act", "embed/other", ENGINE)
SDPA_KERNEL = re.compile(r"fmha|flash|attention|softmax|bmm|gemm|gemv|nvjet|cutlass|xmma", re.IGNORECASE)
"""Kernels inside an attention module that are the attention proper; the rest there is rotary, cache writes, views."""
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")

NameMap = dict[str, dict[str, float]]
"""Kernel name -> part -> device microseconds, from an eager window."""


def part_of(name: str, module: nn.Module) -> str | None:
    kind = type(module).__name__
    if name.endswith("lm_head"):
        return "lm_head"
    if isinstance(module, nn.Linear) or kind == "FusedProjection":
        return "matmul"
    if "Norm" in kind:
        return "norm"
    if "Rotary" in kind:
        return "rotary"
    if kind.endswith("Attention"):
        return "attention"
    if kind.endswith("MLP"):
        return "mlp act"
    if isinstance(module, nn.Embedding) or kind.endswith("ForCausalLM"):
        return "embed/other"
    return None


@contextmanager
def mark_parts(model: nn.Module) -> Iterator[None]:
    """Wrap every module of a known kind in a `part:<kind>` profiler range while inside this block."""
    handles = []
    for name, module in model.named_modules():
        part = part_of(name, module)
        if part is None:
            continue
        stack: list[Any] = []

        def enter(_m: nn.Module, _args: Any, part: str = part, stack: list[Any] = stack) -> None:
            stack.append(torch.autograd.profiler.record_function(f"part:{part}").__enter__())

        def leave(_m: nn.Module, _args: Any, _out: Any, stack: list[Any] = stack) -> None:
            stack.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _innermost(work: list[tuple[float, int, int]], ranges: dict[int, list[dict[str, Any]]]) -> dict[int, str]:
    """For each (host time, thread, index) the name of the innermost range on that thread around it."""
    found: dict[int, str] = {}
    by_thread: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for ts, tid, index in work:
        by_thread[tid].append((ts, index))
    for tid, points in by_thread.items():
        spans = sorted(ranges.get(tid, []), key=lambda e: (e["ts"], -e["dur"]))
        stack: list[dict[str, Any]] = []
        i = 0
        for ts, index in sorted(points):
            while i < len(spans) and spans[i]["ts"] <= ts:
                while stack and stack[-1]["ts"] + stack[-1]["dur"] <= spans[i]["ts"]:
                    stack.pop()
                stack.append(spans[i])
                i += 1
            while stack and stack[-1]["ts"] + stack[-1]["dur"] < ts:
                stack.pop()
            if stack:
                found[index] = stack[-1]["name"].removeprefix("part:")
    return found


def _leaf_cpu_ops(events: list[dict[str, Any]], tid: Any) -> list[dict[str, Any]]:
    ops = sorted((e for e in events if e.get("cat") == "cpu_op" and e.get("tid") == tid), key=lambda e: e["ts"])
    return [
        op for op, nxt in zip(ops, [*ops[1:], None], strict=True) if nxt is None or nxt["ts"] >= op["ts"] + op["dur"]
    ]


def attribute(trace: dict[str, Any], name_map: NameMap | None = None) -> tuple[dict[str, float], NameMap, float]:
    """(microseconds per part, this trace's own name map, device busy microseconds: the union of kernel intervals)."""
    events: list[dict[str, Any]] = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    work = [e for e in events if e.get("cat") in DEVICE_CATS]
    launches = {
        e["args"]["correlation"]: e
        for e in events
        if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})
    }
    ranges: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("part:"):
            ranges[e["tid"]].append(e)
    on_device = bool(work)
    if not on_device:  # no device: the leaf CPU ops of the profiled thread
        tids = list(ranges) or list({e.get("tid") for e in events if e.get("cat") == "cpu_op"})
        work = [op for tid in tids for op in _leaf_cpu_ops(events, tid)]
        points = [(op["ts"], op["tid"], i) for i, op in enumerate(work)]
    else:
        points = []
        for i, kernel in enumerate(work):
            launch = launches.get(kernel.get("args", {}).get("correlation"))
            if launch is not None and launch.get("name") != "cudaGraphLaunch":
                points.append((launch["ts"], launch["tid"], i))
    inner = _innermost(points, ranges)
    parts: dict[str, float] = defaultdict(float)
    own: NameMap = defaultdict(lambda: defaultdict(float))
    for i, item in enumerate(work):
        duration = float(item["dur"])
        name = str(item.get("name", ""))
        part = inner.get(i)
        if part == "attention" and not SDPA_KERNEL.search(name):
            part = "attention: other"
        if part is None and name_map is not None and (_graph_launched(item, launches) or not on_device):
            shares = name_map.get(name)
            if not shares:
                parts[UNMAPPED] += duration
                continue
            total = sum(shares.values())
            for share_part, us in shares.items():
                parts[share_part] += duration * us / total
            continue
        part = part or ENGINE
        parts[part] += duration
        own[name][part] += duration
    return dict(parts), {k: dict(v) for k, v in own.items()}, _busy(work)


def _graph_launched(item: dict[str, Any], launches: dict[Any, dict[str, Any]]) -> bool:
    launch = launches.get(item.get("args", {}).get("correlation"))
    return launch is not None and launch.get("name") == "cudaGraphLaunch"


def _busy(work: list[dict[str, Any]]) -> float:
    total, end = 0.0, float("-inf")
    for item in sorted(work, key=lambda e: e["ts"]):
        start, stop = float(item["ts"]), float(item["ts"]) + float(item["dur"])
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def graph_kernels(trace: dict[str, Any]) -> int:
    """How many kernels a CUDA graph replay launched (none: the profiler did not see inside the graphs)."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    launches = {
        e["args"]["correlation"]: e
        for e in events
        if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})
    }
    return sum(1 for e in events if e.get("cat") in DEVICE_CATS and _graph_launched(e, launches))


def host_wait(trace: dict[str, Any]) -> float:
    """Microseconds the host spent blocked in CUDA synchronisation calls (waiting for the device)."""
    return sum(
        float(e["dur"])
        for e in trace["traceEvents"]
        if e.get("ph") == "X" and e.get("cat") == "cuda_runtime" and "Synchronize" in str(e.get("name", ""))
    )


def host_top(trace: dict[str, Any], limit: int = 8) -> list[tuple[str, float]]:
    """The host calls that took longest in all (CUDA runtime calls and top-level ops), in microseconds."""
    totals: dict[str, float] = defaultdict(float)
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and e.get("cat") in ("cuda_runtime", "cuda_driver"):
            totals[str(e["name"])] += float(e["dur"])
    return sorted(totals.items(), key=lambda kv: -kv[1])[:limit]
