"""Where each millisecond of a decode step goes, on a GPU: 7B NF4 and 1.5B bf16, 1 and 16 rows, fused vs unfused.

    python bench/profile_step.py [--out DIR] [--checkpoints DIR] [--smoke]

Builds Qwen2.5-7B-shaped (loaded in NF4) and Qwen2.5-1.5B-shaped (bf16) random checkpoints, loads each once through
the worker's loader and serves it with the worker's own engine (`workers.setup.build_service`) in several setups:
projections separate, then fused in place (`workers.fuse`); for NF4 also the start-up measured kernel choice
(`workers.nf4_kernels`). For each setup and row count, requests with 512-token prompts keep `rows` rows decoding:
- step time: engine decode steps with CUDA graphs, unprofiled, timed from the engine's step hook;
- a profiled window of the same steps (torch.profiler started and stopped inside the engine thread, from its step
  hook): device busy time per step, split into parts, and idle time (host work, synchronisation, replay gaps);
- the split comes from one eager window of the same setup, where forward hooks mark each module kind
  (bench/step_trace.py); kernels launched outside the model (sampling, copies) are engine work.
Also the 7B's projection matmuls alone, inside CUDA graphs, per path: bitsandbytes' default, the best per weight,
fused with float32 scales (what workers.fuse makes), and fused with re-double-quantised scales (not exact; shown
to price the exactness).
Writes JSON lines and the tables under DIR (default bench/results/profile-<time>/; `--traces` keeps the Chrome
traces there too) and prints the tables last.
`--smoke`: the same code on the CPU with the tiny demo checkpoints (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.step_trace import (  # noqa: E402
    ENGINE,
    PARTS,
    UNMAPPED,
    NameMap,
    attribute,
    graph_kernels,
    host_top,
    host_wait,
    mark_parts,
)
from router.core.config import Config, load_config  # noqa: E402
from workers import nf4_kernels  # noqa: E402
from workers.checkpoints import DEMO_SPECS, build_checkpoint, build_shaped_checkpoint  # noqa: E402
from workers.engine import GenerationRequest  # noqa: E402
from workers.fuse import fuse_projections  # noqa: E402
from workers.loader import LoadedModel, load_model  # noqa: E402
from workers.sampling import SamplingParams  # noqa: E402
from workers.setup import build_service  # noqa: E402

log = logging.getLogger("profile_step")


@dataclass(frozen=True)
class Plan:
    device: str
    rows: tuple[int, ...]
    prompt: int
    width: int
    warm: int
    timed: int
    profiled: int
    eager_profiled: int


GPU = Plan("cuda", (1, 16), 512, 2048, warm=4, timed=48, profiled=16, eager_profiled=3)
SMOKE = Plan("cpu", (1, 2), 24, 128, warm=1, timed=3, profiled=2, eager_profiled=2)


class StepHook:
    """The engine's step hook: once `rows` rows decode, times `timed` steps, then profiles `profiled` more inside
    the engine thread (the profiler records the host calls of the thread that starts it)."""

    def __init__(self, rows: int, warm: int, timed: int, profiled: int, device: str) -> None:
        self.rows, self.warm, self.timed, self.profiled = rows, warm, timed, profiled
        self.activities = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            self.activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.steps = 0
        self.marks: dict[str, float] = {}
        self.profiler: torch.profiler.profile | None = None
        self.done = threading.Event()

    def __call__(self, kind: str, ids: list[str]) -> None:
        if kind != "decode" or len(ids) != self.rows or self.done.is_set():
            return
        self.steps += 1
        now = time.perf_counter()
        if self.steps == self.warm:
            self.marks["timed"] = now
        if self.steps == self.warm + self.timed:
            self.marks["profiled"] = now
            self.profiler = torch.profiler.profile(activities=self.activities)
            self.profiler.start()  # type: ignore[no-untyped-call]
        if self.steps == self.warm + self.timed + self.profiled:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks["end"] = time.perf_counter()
            assert self.profiler is not None
            self.profiler.stop()  # type: ignore[no-untyped-call]
            self.done.set()

    def step_ms(self) -> float:
        return 1000 * (self.marks["profiled"] - self.marks["timed"]) / self.timed if self.timed else float("nan")

    def profiled_ms(self) -> float:
        return 1000 * (self.marks["end"] - self.marks["profiled"]) / self.profiled


def run_window(
    config: Config,
    tier: str,
    loaded: LoadedModel,
    plan: Plan,
    rows: int,
    *,
    graphs: bool,
    kernels: str,
    trace_path: Path,
    name_map: NameMap | None,
) -> dict[str, Any]:
    """Serve `loaded` with the worker's engine, keep `rows` rows decoding and profile a window of their steps."""
    worker = msgspec.structs.replace(config.worker(tier), cuda_graphs=graphs, nf4_kernels=kernels)
    timed = plan.timed if graphs else 0
    profiled = plan.profiled if graphs else plan.eager_profiled
    hook = StepHook(rows, plan.warm, timed, profiled, plan.device)
    service = build_service(config, tier, worker, None, hook, loaded=loaded)
    engine = service.engine
    engine.start()
    generator = torch.Generator().manual_seed(rows)
    vocab = min(4000, int(loaded.model.config.vocab_size))
    # Long enough for the whole window after the last prompt joins: prefill forwards interleave with decode steps,
    # so the first rows decode for a while before all `rows` run together; the streams are cancelled at the end.
    new_tokens = plan.width - plan.prompt - 1

    async def drive() -> None:
        loop = asyncio.get_running_loop()
        streams = []
        for i in range(rows):
            prompt = torch.randint(100, vocab, (plan.prompt,), generator=generator).tolist()
            request = GenerationRequest(
                f"r{i}", prompt, new_tokens, SamplingParams(temperature=0.0), min_tokens=new_tokens
            )
            streams.append(engine.submit(request, loop))
        finished = await asyncio.to_thread(hook.done.wait, 120)
        for stream in streams:
            stream.cancel()
        if not finished:
            raise RuntimeError(f"the window never completed ({hook.steps} steps at {rows} rows)")

    marking = nullcontext() if graphs else mark_parts(loaded.model)
    try:
        with marking:
            asyncio.run(drive())
    finally:
        engine.stop()
    assert hook.profiler is not None
    hook.profiler.export_chrome_trace(str(trace_path))
    trace = json.loads(trace_path.read_text())
    parts_us, own_map, busy_us = attribute(trace, name_map)
    result = {
        "rows": rows,
        "graphs": graphs,
        "step_ms": hook.step_ms(),
        "profiled_step_ms": hook.profiled_ms(),
        "busy_ms": busy_us / 1000 / profiled,
        "parts_ms": {k: v / 1000 / profiled for k, v in parts_us.items()},
        "host_wait_ms": host_wait(trace) / 1000 / profiled,
        "graph_kernels_per_step": graph_kernels(trace) / profiled,
        "host_top_ms": [(name, us / 1000 / profiled) for name, us in host_top(trace)],
        "kernel_choices": kernel_choices(),
        "graph_pool_mb": getattr(getattr(engine.runner, "graph_stats", None), "pool_bytes", 0) / 1e6,
        "name_map": own_map,
    }
    return result  # the service, its cache and graphs go with this frame (the caller collects)


def kernel_choices() -> list[str]:
    """The measured 4-bit kernel table now in force, as `rows x out x in: path`."""
    if not torch.cuda.is_available():
        return []
    table = nf4_kernels.install(nf4_kernels.cuda_ops())
    choices = sorted(table.choices.items()) if table is not None else []
    return [f"{m}x{n}x{k}: {'fused kernel' if fused else 'dequant+linear'}" for (_, _, m, n, k), fused in choices]


def matmul_table(model: Any, rows: tuple[int, ...]) -> list[dict[str, Any]]:
    """The projection matmuls of one step, alone, inside CUDA graphs (7B NF4 only), in ms per step."""
    if not torch.cuda.is_available():
        return []
    layers = [m for m in model.modules() if getattr(getattr(m, "weight", None), "quant_state", None) is not None]
    shapes: dict[tuple[int, int], list[Any]] = {}
    for layer in layers:
        shapes.setdefault(tuple(int(d) for d in layer.weight.quant_state.shape), []).append(layer)  # type: ignore[arg-type]
    out = []
    for m in rows:
        row: dict[str, Any] = {"rows": m, "default": 0.0, "best": 0.0, "fused_kernel": 0.0, "dequant": 0.0}
        for same in shapes.values():
            layer, count = same[0], len(same)
            default = nf4_kernels.time_layer(layer, m, None)
            fused, dequant = nf4_kernels.time_layer(layer, m, True), nf4_kernels.time_layer(layer, m, False)
            row["default"] += 1000 * count * default
            row["best"] += 1000 * count * min(fused, dequant)
            row["fused_kernel"] += 1000 * count * fused
            row["dequant"] += 1000 * count * dequant
        out.append(row)
    return out


def fused_vs_separate(layer: Any, separate: dict[str, Any]) -> dict[str, Any]:
    """On the device: the fused weights dequantise to the parts' weights bit for bit, and their outputs match the
    parts' (relative max difference) by each 4-bit path."""
    import bitsandbytes.functional as F

    on_device = torch.cuda.is_available()
    table = nf4_kernels.install(nf4_kernels.cuda_ops()) if on_device else None
    check: dict[str, Any] = {}
    groups = (
        ("qkv", layer.self_attn.qkv_proj.linear, "q_proj k_proj v_proj"),
        ("gate_up", layer.mlp.gate_up_proj.linear, "gate_proj up_proj"),
    )
    for group, fused, names in groups:
        parts = [separate[n] for n in names.split()]
        weights = [F.dequantize_4bit(p.weight.data, p.weight.quant_state) for p in parts]
        check[f"{group} weights bit-exact"] = torch.equal(
            F.dequantize_4bit(fused.weight.data, fused.weight.quant_state), torch.cat(weights)
        )
        k = int(fused.weight.quant_state.shape[1])
        for m in (1, 16):
            x = torch.randn(m, k, device=fused.weight.device, dtype=torch.bfloat16)
            for path in (True, False) if table is not None else (None,):
                keys = [
                    (x.device.index, x.dtype, m, *(int(d) for d in lin.weight.quant_state.shape))
                    for lin in (fused, *parts)
                ]
                if table is not None:
                    table.choices.update(dict.fromkeys(keys, path))
                with torch.inference_mode():
                    want, got = torch.cat([p(x) for p in parts], -1).float(), fused(x).float()
                for key in keys if table is not None else ():
                    table.choices.pop(key, None)
                name = {True: "fused kernel", False: "dequant+linear", None: "native"}[path]
                check[f"{group} rows={m} {name}: max rel diff"] = float((got - want).abs().max() / want.abs().max())
                check[f"{group} rows={m} {name}: equal"] = torch.equal(got, want)
    return check


def renested(layer: Any) -> Any:
    """A copy of a fused 4-bit layer whose float32 scales are double-quantised again (bench only: not exact)."""
    import bitsandbytes.functional as F
    from bitsandbytes.nn.modules import Params4bit

    state = layer.weight.quant_state
    offset = state.absmax.mean()
    quantized, state2 = F.quantize_blockwise(state.absmax - offset, blocksize=256)
    nested = F.QuantState(
        quantized, state.shape, state.code, state.blocksize, state.quant_type, state.dtype, offset, state2
    )
    clone = copy.copy(layer)
    clone._parameters = dict(layer._parameters)
    clone.weight = Params4bit(
        layer.weight.data,
        quant_state=nested,
        blocksize=state.blocksize,
        compress_statistics=True,
        quant_type=state.quant_type,
        module=clone,
        bnb_quantized=True,
    )
    return clone


@contextmanager
def renested_model(model: Any) -> Iterator[Any]:
    """The model's fused layers swapped for re-double-quantised copies, for the matmul table only."""
    from workers.fuse import FusedProjection

    saved = [(m, m.linear) for m in model.modules() if isinstance(m, FusedProjection)]
    for fusion, linear in saved:
        fusion.linear = renested(linear)
    try:
        yield model
    finally:
        for fusion, linear in saved:
            fusion.linear = linear


def write_config(directory: Path, workers: dict[str, Any]) -> Config:
    raw = yaml.safe_load((ROOT / "config" / "router.yaml").read_text())
    raw["workers"] = workers
    path = directory / "profile.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path, environ={})


def profile_model(label: str, path: Path, nf4: bool, plan: Plan, out: Path, traces: Path) -> list[dict[str, Any]]:
    base = {
        "device": plan.device,
        "dtype": "bfloat16",
        "max_seq_len": plan.width,
        "max_batch_size": max(plan.rows),
        "max_tokens_cap": plan.width - plan.prompt - 1,
        "max_tokens_default": 16,
        "queue_size": 64,
        "fuse_projections": False,
        "quantization": "nf4" if nf4 else "none",
        "model": str(path),
    }
    config = write_config(out, {"large": base})
    started = time.monotonic()
    loaded = load_model(config.worker("large"), config.checkpoint_root(config.worker("large")))
    log.info("%s loaded in %.0fs", label, time.monotonic() - started)
    setups = [("unfused", "bitsandbytes"), ("fused", "bitsandbytes")]
    if nf4:
        setups.append(("fused", "measured"))
    results: list[dict[str, Any]] = []
    for weights, kernels in setups:
        if weights == "fused" and not any(type(m).__name__ == "FusedProjection" for m in loaded.model.modules()):
            worker = config.worker("large")
            if plan.device == "cpu":  # bitsandbytes re-packs CPU weights at their first forward: load them afresh
                layer = load_model(worker, out).model.model.layers[0]
            else:
                layer = loaded.model.model.layers[0]
            separate = {n: getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj")}
            separate |= {n: getattr(layer.mlp, n) for n in ("gate_proj", "up_proj")}
            if plan.device == "cpu":
                loaded = load_model(msgspec.structs.replace(worker, fuse_projections=True), out)
            else:
                fuse_projections(loaded.model)
            if nf4:
                check = fused_vs_separate(loaded.model.model.layers[0], separate)
                results.append({"model": label, "setup": "fused vs separate, layer 0", "check": check})
                log.info("fused vs separate on the device, layer 0: %s", check)
        if nf4 and plan.device == "cuda":
            table = nf4_kernels.install(nf4_kernels.cuda_ops())
            if table is not None:
                table.choices.clear()  # each setup starts from bitsandbytes' heuristic
        setup = f"{weights}, {'measured kernels' if kernels == 'measured' else 'bnb heuristic'}" if nf4 else weights
        for rows in plan.rows:
            stem = f"{label}-{weights}-{kernels}-{rows}".replace(".", "_")
            eager = run_window(
                config,
                "large",
                loaded,
                plan,
                rows,
                graphs=False,
                kernels=kernels,
                trace_path=traces / f"{stem}-eager.json",
                name_map=None,
            )
            graph = run_window(
                config,
                "large",
                loaded,
                plan,
                rows,
                graphs=True,
                kernels=kernels,
                trace_path=traces / f"{stem}-graphs.json",
                name_map=eager.pop("name_map"),
            )
            graph.pop("name_map")
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            row = {"model": label, "setup": setup, "rows": rows, "graphs": graph, "eager": eager}
            results.append(row)
            log.info(
                "%s %s rows=%d: %.2f ms/step (graphs), busy %.2f",
                label,
                setup,
                rows,
                graph["step_ms"],
                graph["busy_ms"],
            )
        if nf4 and plan.device == "cuda" and weights == "fused" and kernels == "bitsandbytes":
            results.append(
                {
                    "model": label,
                    "setup": "matmuls: fused, float32 scales",
                    "matmuls": matmul_table(loaded.model, (1, 16, 64)),
                }
            )
            with renested_model(loaded.model) as model:
                results.append(
                    {
                        "model": label,
                        "setup": "matmuls: fused, re-double-quantised scales",
                        "matmuls": matmul_table(model, (1, 16, 64)),
                    }
                )
        if nf4 and plan.device == "cuda" and weights == "unfused":
            results.append(
                {"model": label, "setup": "matmuls: separate", "matmuls": matmul_table(loaded.model, (1, 16, 64))}
            )
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results


def print_tables(results: list[dict[str, Any]]) -> str:
    columns = [*PARTS, UNMAPPED]
    checks = [
        line
        for r in results
        if "check" in r
        for line in [f"{r['model']}: {r['setup']}", *(f"  {k}: {v}" for k, v in r["check"].items()), ""]
    ]
    short = {"attention: other": "attn other", ENGINE: "engine", UNMAPPED: "unmapped", "embed/other": "other"}
    chosen = {r["model"]: r["graphs"]["kernel_choices"] for r in results if r.get("graphs", {}).get("kernel_choices")}
    for model, choices in chosen.items():
        checks += [f"{model}: measured 4-bit kernel choices (rows x out x in)", "  " + "; ".join(choices), ""]
    lines = [
        *checks,
        "decode step with CUDA graphs, ms per step: step = unprofiled; prof = profiled; busy = device busy (union of",
        "kernels); idle = prof - busy (host work, synchronisation, replay gaps); wait = host blocked in syncs; parts =",
        "device time by part (graph kernels split by name as in the eager window)",
        f"{'model':<10} {'setup':<28} {'rows':>4} {'step':>6} {'tok/s':>6} {'prof':>6} {'busy':>6} {'idle':>6} "
        f"{'wait':>6} " + " ".join(f"{short.get(c, c):>9}" for c in columns),
    ]
    stepped = [r for r in results if "graphs" in r]
    for r in stepped:
        g = r["graphs"]
        step, prof = g["step_ms"], g["profiled_step_ms"]
        parts = " ".join(f"{g['parts_ms'].get(c, 0.0):>9.2f}" for c in columns)
        lines.append(
            f"{r['model']:<10} {r['setup']:<28} {r['rows']:>4} {step:>6.2f} {1000 * r['rows'] / step:>6.0f} "
            f"{prof:>6.2f} {g['busy_ms']:>6.2f} {prof - g['busy_ms']:>6.2f} {g['host_wait_ms']:>6.2f} {parts}"
        )
    if torch.cuda.is_available() and any(r["graphs"]["graph_kernels_per_step"] == 0 for r in stepped):
        lines.append("NOTE: no kernel launched by a graph replay was traced: parts and busy miss the graphs' work")
    lines += [
        "",
        "the same steps eager (no graphs), profiled: where launch overhead goes",
        f"{'model':<10} {'setup':<28} {'rows':>4} {'prof':>6} {'busy':>6} {'idle':>6}",
    ]
    for r in stepped:
        e = r["eager"]
        lines.append(
            f"{r['model']:<10} {r['setup']:<28} {r['rows']:>4} {e['profiled_step_ms']:>6.2f} {e['busy_ms']:>6.2f} "
            f"{e['profiled_step_ms'] - e['busy_ms']:>6.2f}"
        )
    matmuls = [r for r in results if r.get("matmuls")]
    if matmuls:
        lines += [
            "",
            "projection matmuls alone, all layers, in CUDA graphs (ms per step)",
            f"{'setup':<46} {'rows':>4} {'bnb default':>11} {'best/weight':>11} {'fused kern':>10} {'dequant':>8}",
        ]
        for r in matmuls:
            for m in r["matmuls"]:
                lines.append(
                    f"{r['setup']:<46} {m['rows']:>4} {m['default']:>11.2f} {m['best']:>11.2f} "
                    f"{m['fused_kernel']:>10.2f} {m['dequant']:>8.2f}"
                )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bench-checkpoints-v2"))
    parser.add_argument("--smoke", action="store_true", help="tiny demo checkpoints on the CPU")
    parser.add_argument("--only", choices=["nf4", "bf16"], default=None, help="one of the two models")
    parser.add_argument("--traces", action="store_true", help="keep the Chrome traces (~5 MB a window) under DIR")
    args = parser.parse_args()
    out = args.out or ROOT / "bench" / "results" / f"profile-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    plan = SMOKE if args.smoke else GPU
    started = time.monotonic()
    if args.smoke:
        models = [
            ("tiny-nf4", build_checkpoint(args.checkpoints / "large", DEMO_SPECS["large"]), True),
            ("tiny-bf16", build_checkpoint(args.checkpoints / "small", DEMO_SPECS["small"]), False),
        ]
    else:
        models = [
            ("7b-nf4", build_shaped_checkpoint(args.checkpoints / "qwen2.5-7b", "qwen2.5-7b", device="cuda"), True),
            (
                "1.5b-bf16",
                build_shaped_checkpoint(args.checkpoints / "qwen2.5-1.5b", "qwen2.5-1.5b", device="cuda"),
                False,
            ),
        ]
        gc.collect()
        torch.cuda.empty_cache()
    log.info("checkpoints ready in %.0fs", time.monotonic() - started)
    # The profiler's library initialises once per process, and wants that on the main thread; the windows start it
    # from the engine's thread.
    activities = [torch.profiler.ProfilerActivity.CPU]
    if plan.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities):
        torch.zeros(1, device=plan.device).add_(1)
    results: list[dict[str, Any]] = []
    for label, path, nf4 in models:
        if args.only and not label.endswith(args.only):
            continue
        with tempfile.TemporaryDirectory() as scratch:
            traces = out / "traces" if args.traces else Path(scratch)
            traces.mkdir(exist_ok=True)
            results += profile_model(label, path, nf4, plan, out, traces)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    with (out / "profile_step.jsonl").open("w") as fh:
        for row in results:
            fh.write(json.dumps({**row, "device": device}, default=str) + "\n")
    table = print_tables(results)
    (out / "profile_step.txt").write_text(table + "\n")
    print(f"\n{device}, {time.monotonic() - started:.0f} s in all; JSON and traces in {out}\n")
    print(table)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
