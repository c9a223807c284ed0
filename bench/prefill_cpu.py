"""Packed, interleaved prefill on the CPU: a burst of short chats, and a long prompt joining a running stream,
through the engine of this tree and of a baseline tree (e.g. main, via `git archive`), in the same run.

Models: the embedded SmolLM2-135M-Instruct (fp32, eager), where a forward's cost on the CPU is nearly all per
token, or a demo checkpoint (`--model demo:large`, 4 M parameters, random weights), where a forward's fixed cost
dominates as it does for short prompts on a GPU. Each tree is measured in its own processes, with the engine
built the same way from that tree's own modules (cache, runner, ledger, engine), so only the engine's code
differs; the trees take turns (`--rounds`), so a neighbour's load on shared cores falls on both. Prompts are
chat-templated user messages; answers are greedy with end of sequence ignored, and every token counts as one
character of text, so each token reaches the client as an event.

Cases:
- burst: `--burst` short chats (about 46 tokens each) submitted at once to an idle engine, `--burst-new` tokens
  each: TTFT p50/p99 (submit to first token, seen on the event loop).
- long join: one stream decoding `--stream-new` tokens; at its 10th token a `--long`-token prompt is submitted.
  The running stream's inter-token gaps (decode steps that include it, timed by the engine's fault hook): the
  largest and the median while the long prompt is prefilled, the median before it joined; the long prompt's TTFT.

    git archive <commit> | tar -x -C /tmp/prefill-before
    python bench/prefill_cpu.py --baseline /tmp/prefill-before [--model demo:large] [--prefill-chunk 512]

Appends JSON lines to bench/results/prefill_cpu.jsonl and prints a table last.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
TOPICS = ["rivers", "volcanoes", "bread", "chess", "comets", "bees", "glass", "tides", "maps", "violins", "salt"]
PARAGRAPH = "The committee reviewed the harbour records, the weather logs and the cargo manifests once more. "
PASSED_ON = ("model", "burst", "burst-new", "long", "stream-new", "prefill-chunk", "max-batch", "max-len")
PASSED_ON += ("pool-tokens", "repeat")


class OneCharText:
    """Every token is one character of text."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "x" * len(ids)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def build_engine(args: argparse.Namespace, hook: Any) -> tuple[Any, Any]:
    """The engine of the tree first on sys.path, built from its own modules; returns (engine, tokenizer)."""
    import torch

    from router.core.workers import WorkerConfig, var_dir
    from workers.engine import Engine
    from workers.kv_cache import PagedKVCache, blocks_for
    from workers.ledger import VramLedger
    from workers.loader import attention_shape, load_model
    from workers.memory import SimulatedGpu
    from workers.runner import ModelRunner

    loaded = load_model(WorkerConfig(model=args.model, device="cpu"), var_dir() / "checkpoints")
    layers, kv_heads, head_dim = attention_shape(loaded.model.config)
    block_size = 16
    cache = PagedKVCache(
        layers=layers,
        max_batch=args.max_batch,
        kv_heads=kv_heads,
        max_len=args.max_len,
        head_dim=head_dim,
        dtype=torch.float32,
        device="cpu",
        num_blocks=blocks_for(args.pool_tokens, block_size) + 1,
        block_size=block_size,
    )
    runner = ModelRunner(loaded.model, cache, use_graphs=False, prefill_chunk=args.prefill_chunk)
    ledger = VramLedger(
        SimulatedGpu(10**12),
        kv_bytes_per_token=loaded.kv_bytes_per_token,
        fixed_bytes=0,
        pool_bytes=cache.allocator.total * cache.block_bytes,
        budget_fraction=1.0,
        margin_bytes=0,
        block_size=block_size,
    )
    engine = Engine(runner, OneCharText(), ledger, eos_ids=(), queue_size=4 * args.max_batch, fault_hook=hook)
    return engine, loaded.tokenizer


def chat(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One tree's numbers (in a child process whose sys.path starts with that tree)."""
    import torch

    from workers.engine import Failed, Finished, GenerationRequest, TextDelta
    from workers.sampling import SamplingParams

    torch.manual_seed(0)
    steps: list[tuple[float, list[str]]] = []

    def hook(stage: str, ids: list[str]) -> None:
        steps.append((time.perf_counter(), [f"{stage}:{i}" for i in ids]))

    engine, tokenizer = build_engine(args, hook)
    engine.start()

    def request(rid: str, prompt: list[int], new: int) -> Any:
        return GenerationRequest(rid, prompt, new, SamplingParams(temperature=0.0))

    async def first_token(stream: Any, sent: float, tokens: list[float], tenth: asyncio.Event | None = None) -> float:
        """Reads the stream to its end; returns its TTFT, with every token's arrival in `tokens`."""
        while True:
            event = await stream.next()
            if isinstance(event, TextDelta):
                tokens.append(time.perf_counter())
                if tenth is not None and len(tokens) == 10:
                    tenth.set()
            elif isinstance(event, Finished):
                return tokens[0] - sent
            else:
                assert not isinstance(event, Failed), event.error

    shorts = [
        chat(tokenizer, f"In two sentences, what is interesting about {TOPICS[i % len(TOPICS)]}? (question {i})")
        for i in range(args.burst)
    ]
    long_text = PARAGRAPH
    while len(chat(tokenizer, long_text)) < args.long:
        long_text += PARAGRAPH
    long_prompt = chat(tokenizer, long_text)[-args.long :]

    async def burst(tag: str) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        sent = time.perf_counter()
        streams = [engine.submit(request(f"{tag}-{i}", p, args.burst_new), loop) for i, p in enumerate(shorts)]
        ttfts = await asyncio.gather(*(first_token(s, sent, []) for s in streams))
        return {"ttft_p50": percentile(ttfts, 0.5), "ttft_p99": percentile(ttfts, 0.99)}

    async def long_join(tag: str) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        del steps[:]
        tenth = asyncio.Event()
        running = engine.submit(request(f"{tag}-run", shorts[0], args.stream_new), loop)
        run_task = asyncio.ensure_future(first_token(running, time.perf_counter(), [], tenth))
        await tenth.wait()
        joined_at = time.perf_counter()
        long = engine.submit(request(f"{tag}-long", long_prompt, 4), loop)
        long_ttft = await first_token(long, joined_at, [])
        long_done = time.perf_counter()
        await run_task
        mine = [t for t, ids in steps if f"decode:{tag}-run" in ids]
        before = [b - a for a, b in itertools.pairwise(mine) if b < joined_at]
        during = [b - a for a, b in itertools.pairwise(mine) if joined_at < b <= long_done]
        return {
            "gap_before_p50": statistics.median(before),
            "gap_during_max": max(during),
            "gap_during_p50": statistics.median(during),
            "long_ttft": long_ttft,
        }

    async def main() -> dict[str, list[dict[str, float]]]:
        await burst("warm")  # first calls: allocator, kernels
        results: dict[str, list[dict[str, float]]] = {"burst": [], "long": []}
        for r in range(args.repeat):
            results["burst"].append(await burst(f"b{r}"))
            results["long"].append(await long_join(f"l{r}"))
        return results

    try:
        runs = asyncio.run(main())
    finally:
        engine.stop()
    summary: dict[str, Any] = {"short_prompt_tokens": statistics.mean(len(p) for p in shorts)}
    summary["long_prompt_tokens"] = len(long_prompt)
    for case, values in runs.items():
        for key in values[0]:
            summary[f"{case}_{key}"] = statistics.median(v[key] for v in values)
    cost = getattr(engine.pace, "prefill_cost", None)  # the fitted prefill model, where the tree has one
    if cost is not None:
        summary["prefill_overhead_ms"] = cost.overhead_seconds * 1e3
        summary["prefill_tokens_per_s"] = cost.tokens_per_second
    return summary


def child(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    passed = [x for k in PASSED_ON for x in (f"--{k}", str(getattr(args, k.replace("-", "_"))))]
    argv = [sys.executable, str(HERE), "--measure", str(tree), *passed]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: exit {done.returncode}\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="a tree of the code to compare with (e.g. main's)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct", help="or demo:large")
    parser.add_argument("--burst", type=int, default=32)
    parser.add_argument("--burst-new", type=int, default=8)
    parser.add_argument("--long", type=int, default=1536)
    parser.add_argument("--stream-new", type=int, default=120)
    parser.add_argument("--prefill-chunk", type=int, default=512)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--pool-tokens", type=int, default=12288, help="KV-cache blocks, in tokens")
    parser.add_argument("--repeat", type=int, default=2, help="measurements per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per tree, the trees taking turns")
    args = parser.parse_args()
    if args.measure is not None:
        sys.path.insert(0, str(args.measure.resolve()))
        print(json.dumps(measure(args)))
        return 0
    trees = ([("baseline", args.baseline)] if args.baseline else []) + [("this tree", ROOT)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for _ in range(args.rounds):
        for name, tree in trees:
            runs[name].append(child(tree, args))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, tree in trees:
        row: dict[str, Any] = {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
        row.update(tree=name, path=str(tree), rounds=runs[name], args={k: str(v) for k, v in vars(args).items()})
        rows.append(row)
        with (out / "prefill_cpu.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    print(f"{args.model}, prefill_chunk {args.prefill_chunk}, burst of {args.burst}, long prompt {args.long} tokens")
    print(
        "| tree | burst TTFT p50 | p99 | stream gap max while long joins | gap p50 then | gap p50 before | long TTFT |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ms = {k: f"{v * 1e3:.0f} ms" for k, v in r.items() if isinstance(v, float) and k.startswith(("burst", "long_"))}
        print(
            f"| {r['tree']} | {ms['burst_ttft_p50']} | {ms['burst_ttft_p99']} | {ms['long_gap_during_max']} "
            f"| {ms['long_gap_during_p50']} | {ms['long_gap_before_p50']} | {ms['long_long_ttft']} |"
        )
    for r in rows:
        if "prefill_overhead_ms" in r:
            print(
                f"{r['tree']}: fitted prefill forward {r['prefill_overhead_ms']:.1f} ms + tokens at "
                f"{r['prefill_tokens_per_s']:.0f}/s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
