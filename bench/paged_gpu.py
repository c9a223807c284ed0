"""The paged KV cache on a GPU: graph-vs-eager greedy equality, decode tok/s at 1/16/64 concurrent, chats that fit.

For each model (Qwen2.5-1.5B shape in bf16 as the small tier, Qwen2.5-7B shape in NF4 as the large tier; random
weights, built on the GPU), the worker is assembled with its own `build_service` on a device simulated at
`--device-gb` (so the sizing is that of a card of that size, `budget_fraction` from config/gpu.yaml) and reports:

- its sizing: fixed cost, graph pool, KV blocks, and how many concurrent 300-token chats (prompt and max_tokens
  together) fit, next to how many the old row grid (min(16, budget / 4096-token rows)) admitted;
- decode tokens/s, all requests together, at 1, 16 and 64 concurrent requests (128-token prompts, 128 new tokens,
  greedy, end of sequence ignored), through the engine and its captured CUDA graphs;
- graph-vs-eager equality: the same staggered greedy requests (joins at fixed decode steps, prompts of different
  lengths crossing block boundaries, a small prefill chunk) through a graph runner and an eager runner at the same
  padded shapes must give the same tokens.

    python bench/paged_gpu.py [--device-gb 24] [--only 7b] [--compile]   # on a GPU host
    python bench/paged_gpu.py --cpu                                       # the same code on a tiny model, eagerly

Prints one JSON line per model and a table last.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.core.config import load_config  # noqa: E402
from workers.engine import Engine, Failed, Finished, GenerationRequest, RequestStream  # noqa: E402
from workers.kv_cache import PagedKVCache, blocks_for  # noqa: E402
from workers.loader import attention_shape  # noqa: E402
from workers.memory import SimulatedGpu  # noqa: E402
from workers.runner import ModelRunner  # noqa: E402
from workers.sampling import SamplingParams  # noqa: E402
from workers.setup import build_service  # noqa: E402

GB = 1024**3
CHAT_TOKENS = 300


def greedy(prompt: list[int], new: int, rid: str) -> GenerationRequest:
    return GenerationRequest(rid, prompt, new, SamplingParams(temperature=0.0), min_tokens=new)


def decode_rate(engine: Engine, concurrency: int, prompt_len: int, new: int, vocab: int) -> dict[str, float]:
    """All requests submitted at once; decode tokens/s (the engine's own count) from the moment the last of them
    got its first token (all are running) until the first of them ends (the batch starts to shrink)."""
    marks: dict[str, tuple[float, int]] = {}
    started: list[float] = []

    async def collect(stream: RequestStream) -> None:
        first = True
        while True:
            event = await stream.next()
            if first:  # its first text (or its end: text may be held back, e.g. a partial character)
                first = False
                started.append(time.perf_counter())
                if len(started) == concurrency:
                    marks["all"] = (started[-1], engine.stats.decode_tokens)
            if isinstance(event, Finished):
                marks.setdefault("end", (time.perf_counter(), engine.stats.decode_tokens))
                return
            elif isinstance(event, Failed):
                raise event.error

    async def main() -> None:
        loop = asyncio.get_running_loop()
        generator = torch.Generator().manual_seed(concurrency)
        streams = [
            engine.submit(
                greedy(torch.randint(100, vocab - 1, (prompt_len,), generator=generator).tolist(), new, f"c{i}"), loop
            )
            for i in range(concurrency)
        ]
        await asyncio.gather(*(collect(s) for s in streams))

    engine.stats.largest_batch = 0
    asyncio.run(main())
    (t0, n0), (t1, n1) = marks["all"], marks["end"]
    return {"tok_s": (n1 - n0) / max(t1 - t0, 1e-9), "largest_batch": float(engine.stats.largest_batch)}


def staggered_requests(vocab: int) -> tuple[list[GenerationRequest], dict[int, list[GenerationRequest]]]:
    """Greedy requests: three at once, then more joining at fixed decode steps; prompts of different lengths."""
    generator = torch.Generator().manual_seed(7)

    def prompt(n: int) -> list[int]:
        return torch.randint(100, vocab - 1, (n,), generator=generator).tolist()

    first = [greedy(prompt(n), 40, f"a{n}") for n in (5, 17, 33)]
    later = {3: [greedy(prompt(70), 30, "b70")], 9: [greedy(prompt(16), 50, "c16"), greedy(prompt(1), 20, "d1")]}
    later[20] = [greedy(prompt(130), 25, "e130")]
    return first, later


def staggered_tokens(engine: Engine, vocab: int) -> list[list[int]]:
    """The staggered requests joining at fixed decode steps (a deterministic schedule, so two engines see the same
    batches), with prompts crossing block boundaries; returns each request's token ids, in request-id order."""
    first, later = staggered_requests(vocab)
    ids: dict[str, list[int]] = {}
    original = engine.tokenizer

    class Recorder:
        """Token ids as text: one decimal per token, so the events carry the ids themselves."""

        def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
            return "".join(f"{t}," for t in tokens)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        streams: list[RequestStream] = [engine.submit(r, loop) for r in first]
        steps = [0]

        def hook(stage: str, _ids: list[str]) -> None:
            if stage == "decode":
                steps[0] += 1
                streams.extend(engine.submit(r, loop) for r in later.pop(steps[0], []))

        engine._fault_hook = hook
        done = 0
        while done < len(streams) or later:
            for stream in list(streams[done:]):
                text = ""
                while not isinstance(event := await stream.next(), Finished):
                    assert not isinstance(event, Failed), event.error
                    text += event.text
                ids[stream.request.id] = [int(t) for t in text.split(",") if t]
                done += 1
            await asyncio.sleep(0.01)

    engine.tokenizer = Recorder()
    try:
        asyncio.run(main())
    finally:
        engine.tokenizer = original
        engine._fault_hook = None
    return [ids[k] for k in sorted(ids)]


def equality(
    model: Any, device: str, dtype: torch.dtype, prefill_chunk: int, vocab: int, read_in_place: bool
) -> dict[str, Any]:
    """The same staggered greedy schedule through captured graphs and eagerly at the same padded shapes; where decode
    attention reads the cache in place, also eagerly through the gather path (same schedule, other kernels)."""
    layers, kv_heads, head_dim = attention_shape(model.config)
    outputs = []
    runs = [(True, read_in_place), (False, read_in_place)] + ([(False, False)] if read_in_place else [])
    for graphs, in_place in runs:
        cache = PagedKVCache(
            layers=layers,
            max_batch=8,
            kv_heads=kv_heads,
            max_len=512,
            head_dim=head_dim,
            dtype=dtype,
            device=device,
            num_blocks=8 * blocks_for(512, 16) + 1,
            block_size=16,
        )
        runner = ModelRunner(
            model, cache, use_graphs=graphs, prefill_chunk=prefill_chunk, smallest_width=64, read_in_place=in_place
        )
        runner.padded = True  # eager at the graphs' bucket shapes: the same kernels, so the same numbers
        runner.capture_graphs()
        from workers.ledger import VramLedger

        ledger = VramLedger(
            SimulatedGpu(10**12),
            kv_bytes_per_token=cache.block_bytes // 16,
            fixed_bytes=0,
            pool_bytes=cache.allocator.total * cache.block_bytes,
            budget_fraction=1.0,
            margin_bytes=0,
            block_size=16,
        )
        engine = Engine(runner, None, ledger, eos_ids=(), queue_size=64)
        engine.start()
        try:
            outputs.append(staggered_tokens(engine, vocab))
        finally:
            engine.stop()
        assert cache.allocator.free == cache.allocator.total, "blocks leaked"
        del runner, cache, engine
        gc.collect()
    graph_out, eager_out = outputs[:2]
    same = sum(g == e for g, e in zip(graph_out, eager_out, strict=True))
    row: dict[str, Any] = {
        "graph_vs_eager_equal": same == len(graph_out),
        "requests": len(graph_out),
        "identical": same,
    }
    if read_in_place:
        # In place vs gathered: the same sums in another order (bf16), so greedy picks may part where two tokens
        # nearly tie (random weights make near-ties common): count identical requests and the tokens agreed.
        gathered = outputs[2]
        agreed = [_common_prefix(a, b) for a, b in zip(eager_out, gathered, strict=True)]
        row["in_place_vs_gather_identical"] = sum(a == b for a, b in zip(eager_out, gathered, strict=True))
        row["in_place_vs_gather_tokens_agreed"] = f"{sum(agreed)}/{sum(len(a) for a in gathered)}"
        # Both against transformers' own greedy `generate` (its sdpa, no paged cache), request by request.
        first, later = staggered_requests(vocab)
        requests = sorted([*first, *(r for group in later.values() for r in group)], key=lambda r: r.id)
        reference = []
        with torch.inference_mode():
            for request in requests:
                out = model.generate(
                    torch.tensor([request.prompt], device=device),
                    max_new_tokens=request.max_tokens,
                    min_new_tokens=request.max_tokens,
                    do_sample=False,
                )
                reference.append(out[0, len(request.prompt) :].tolist())
        total = sum(len(r) for r in reference)
        for name, got in (("in_place", eager_out), ("gather", gathered)):
            agreed = [_common_prefix(a, b) for a, b in zip(got, reference, strict=True)]
            row[f"{name}_vs_generate_identical"] = sum(a == b for a, b in zip(got, reference, strict=True))
            row[f"{name}_vs_generate_tokens_agreed"] = f"{sum(agreed)}/{total}"
    return row


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@torch.inference_mode()
def replay_profile(runner: ModelRunner, rows: int, tokens: int, steps: int = 64) -> dict[str, Any]:
    """The decode step's graph for `rows` rows at `tokens` positions replayed back to back, each step's greedy token
    fed to the next on the device: the step time with nothing on the host between steps (what the engine's rate at
    this many rows could reach) and where the device time goes, kernel by kernel (torch.profiler, 16 steps)."""
    from torch.profiler import ProfilerActivity, profile

    runner.positions[:rows] = tokens - 1

    def step() -> None:
        runner.input_ids[:rows, 0].copy_(runner.decode(rows, tokens).argmax(dim=-1))

    for _ in range(8):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    start.record()
    for _ in range(steps):
        step()
    end.record()
    end.synchronize()
    step_ms = float(start.elapsed_time(end)) / steps
    profiled = 16
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(profiled):
            step()
        torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    for event in prof.key_averages():
        device_us = float(getattr(event, "self_device_time_total", 0.0) or getattr(event, "self_cuda_time_total", 0.0))
        if device_us > 0:
            kernels[event.key] = kernels.get(event.key, 0.0) + device_us / profiled / 1000
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:20]
    return {
        f"replay_step_ms_{rows}": round(step_ms, 3),
        f"replay_tok_s_{rows}": round(rows * 1000 / step_ms, 1),
        f"kernels_ms_{rows}": {name[:90]: round(ms, 4) for name, ms in top},
        f"kernels_total_ms_{rows}": round(sum(kernels.values()), 3),
    }


def write_config(path: Path, tier: str, worker: dict[str, Any]) -> Path:
    raw = yaml.safe_load((ROOT / "config" / "router.yaml").read_text())
    raw["workers"] = {tier: worker}
    path.write_text(yaml.safe_dump(raw))
    return path


def run_model(label: str, tier: str, worker: dict[str, Any], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    config = load_config(write_config(tmp / f"{label}.yaml", tier, worker), environ={})
    worker_config = config.worker(tier)
    started = time.monotonic()
    service = build_service(config, tier, worker_config, SimulatedGpu(int(args.device_gb * GB)), None)
    engine = service.engine
    memory = service.ledger.snapshot()
    runner = engine.runner
    graphs = runner.graph_stats
    per_chat = blocks_for(CHAT_TOKENS, memory.block_size)
    row = {
        "model": label,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.cpu else "cpu",
        "device_gb": args.device_gb,
        "start_s": round(time.monotonic() - started, 1),
        "fixed_mb": memory.fixed / 1e6,
        "graph_pool_mb": graphs.pool_bytes / 1e6 if graphs else 0.0,
        "graphs": len(runner._graphs),
        "widths": runner.widths,
        "budget_mb": memory.budget / 1e6,
        "block_size": memory.block_size,
        "blocks_total": memory.blocks_total,
        "chats_300_fit": min(worker_config.max_batch_size, memory.blocks_total // per_chat),
        "old_grid_rows": min(16, memory.budget // (worker_config.max_seq_len * memory.kv_bytes_per_token)),
    }
    vocab = min(engine.vocab_size, len(service.tokenizer))  # ids the tokenizer can decode
    engine.start()
    try:
        for concurrency in args.concurrency:
            n = min(concurrency, row["chats_300_fit"], worker_config.max_batch_size)
            rate = decode_rate(engine, n, args.prompt, args.new, vocab)
            row[f"tok_s_{concurrency}"] = round(rate["tok_s"], 1)
            row[f"batch_{concurrency}"] = int(rate["largest_batch"])
            row[f"ran_{concurrency}"] = n
        # Every 300-token chat that fits, at once: all admitted, all decoded in one batch, all blocks back.
        fit = row["chats_300_fit"]
        rate = decode_rate(engine, fit, CHAT_TOKENS - 100, 100, vocab)
        row["chats_300_together"] = int(rate["largest_batch"])
        row["blocks_back"] = engine.cache.allocator.free == engine.cache.allocator.total
    finally:
        engine.stop()
    if args.replay and runner.use_graphs:
        for rows in (1, 16):
            row.update(replay_profile(runner, rows, args.prompt + args.new))
    row["decode_attention"] = "in-place" if runner.read_in_place else "gather"
    if args.no_equality:
        return row
    dtype = engine.cache.keys[0].dtype
    row.update(equality(runner.model, str(engine.cache.device), dtype, 32, vocab, runner.read_in_place))
    del service, engine, runner
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device-gb", type=float, default=24.0, help="the simulated card's size (GiB)")
    parser.add_argument("--only", nargs="*", default=None, help="model labels to run (1.5b, 7b)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow start-up)")
    parser.add_argument("--cpu", action="store_true", help="a tiny demo model on the CPU, eagerly (a smoke run)")
    parser.add_argument("--decode-attention", choices=["auto", "in-place", "gather"], default="auto")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 16, 64])
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens of the tok/s runs")
    parser.add_argument("--new", type=int, default=128, help="new tokens of the tok/s runs")
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/bench-checkpoints-v2"))
    parser.add_argument("--replay", action="store_true", help="also the step's graph replayed with no host work")
    parser.add_argument("--no-equality", action="store_true", help="skip the graph-vs-eager equality runs")
    args = parser.parse_args()
    gpu = yaml.safe_load((ROOT / "config" / "gpu.yaml").read_text())["workers"]
    tmp = Path(tempfile.mkdtemp(prefix="paged-gpu-"))
    if args.cpu:
        args.device_gb, args.new, args.prompt = 2.0, 16, 24
        args.concurrency = list(dict.fromkeys(min(c, 8) for c in args.concurrency))
        base = {"model": "demo:small", "device": "cpu"}
        models = {"demo-cpu": ("small", {**base, "max_seq_len": 1024, "max_tokens_cap": 512, "max_batch_size": 8})}
    else:
        from workers.checkpoints import build_shaped_checkpoint

        keep = ("max_seq_len", "max_tokens_cap", "max_tokens_default", "max_batch_size", "block_size", "vram")
        models = {}
        for label, tier, shape in (("1.5b-bf16", "small", "qwen2.5-1.5b"), ("7b-nf4", "large", "qwen2.5-7b")):
            if args.only and label.split("-")[0] not in args.only and label not in args.only:
                continue
            path = build_shaped_checkpoint(args.checkpoints / shape, shape, device="cuda", dtype="bfloat16")
            worker = {k: v for k, v in gpu[tier].items() if k in keep}
            worker.update(model=str(path), device="cuda", dtype="bfloat16", compile=args.compile, cuda_graphs=True)
            worker["decode_attention"] = args.decode_attention
            if tier == "large":
                worker["quantization"] = "nf4"
            models[label] = (tier, worker)
            gc.collect()
            torch.cuda.empty_cache()
    rows = []
    for label, (tier, worker) in models.items():
        row = run_model(label, tier, worker, args, tmp)
        print(json.dumps(row), flush=True)
        rows.append(row)
    head = f"{'model':<10} {'fixed MB':>9} {'graphs MB':>9} {'blocks':>7} {'300-tok chats':>13} {'old grid':>8} "
    print("\n" + head, end="")
    print(" ".join(f"{'tok/s@' + str(c):>10}" for c in args.concurrency), " graph==eager")
    for r in rows:
        print(
            f"{r['model']:<10} {r['fixed_mb']:>9.0f} {r['graph_pool_mb']:>9.0f} {r['blocks_total']:>7} "
            f"{r['chats_300_fit']:>8} ({r['chats_300_together']:>2}) {r['old_grid_rows']:>8} ",
            end="",
        )
        print(
            " ".join(f"{r.get(f'tok_s_{c}', 0):>10.1f}" for c in args.concurrency),
            f" {r.get('graph_vs_eager_equal', 'not run')}",
            end="",
        )
        if "in_place_vs_gather_identical" in r:
            print(
                f"  in place vs gather: {r['in_place_vs_gather_identical']}/{r['requests']} identical,"
                f" {r['in_place_vs_gather_tokens_agreed']} tokens; vs generate: in place"
                f" {r['in_place_vs_generate_identical']}/{r['requests']} ({r['in_place_vs_generate_tokens_agreed']}),"
                f" gather {r['gather_vs_generate_identical']}/{r['requests']}"
                f" ({r['gather_vs_generate_tokens_agreed']})",
                end="",
            )
        print(f"  [{r['decode_attention']}]")
    ok = all(r.get("graph_vs_eager_equal", True) and r["blocks_back"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
