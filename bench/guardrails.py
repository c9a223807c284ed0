"""What guardrails cost: guarded vs unguarded through the router, each rail alone, and naive NeMo.

Against the same stand-in upstream (a separate process answering like a local 7B: first token after
100 ms, then a word every 7 ms), each router variant runs as its own `tiered-router serve` process:
unguarded, guarded with the shipped LLM-free rails, and guarded with `self check input` added (its
calls answered by a small-tier stand-in after 20 ms). For each: non-streamed latency and streamed time
to first token, p50/p90 over sequential requests, and model calls per request counted at the stand-ins. Then
the same for requests to the unguarded `small` tier (its stand-in answers after 20 ms): no guard loaded,
`guardrails.scope: guarded-tiers` (every request screened by the LLM-free input rails) and `scope: all`.
Then, in this process: each rail's own cost, and the naive setup (NeMo generating through its own LLM
call with dialog rails and self-checks on) against the same stand-in.

    python bench/guardrails.py [--requests 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["NEMO_GUARDRAILS_NO_USAGE_STATS"] = "1"

from bench.processes import start  # noqa: E402
from tests.servers import free_port  # noqa: E402

PROMPT = (
    "Compare the consistency models of Raft and Paxos, explain how each handles leader failure, "
    "and describe a scenario where one is preferable."
)
MESSAGES = [{"role": "user", "content": PROMPT}]


def start_7b_standin(port: int) -> subprocess.Popen[bytes]:
    """The upstream both the router variants and naive NeMo are measured against: a local 7B's timing."""
    args = ["standin", "--port", str(port), "--name", "no", "--delay-ms", "100", "--chunk-delay-ms", "7"]
    return start([*args, "--record", "100000"], f"http://127.0.0.1:{port}/v1/models")


def calls(url: str) -> int:
    return len(httpx.get(f"{url}/_standin/requests").json())


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def drive(router: str, n: int, model: str = "large") -> dict[str, float]:
    total, ttft = [], []
    with httpx.Client(timeout=30) as client:
        body = {"model": model, "messages": MESSAGES}
        for _ in range(3):
            client.post(f"{router}/v1/chat/completions", json=body).raise_for_status()
        for _ in range(n):
            started = time.perf_counter()
            response = client.post(f"{router}/v1/chat/completions", json=body)
            assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] == "stop"
            total.append(time.perf_counter() - started)
        for _ in range(n):
            started = time.perf_counter()
            with client.stream("POST", f"{router}/v1/chat/completions", json={**body, "stream": True}) as response:
                first = None
                for line in response.iter_lines():
                    if (
                        first is None
                        and line.startswith("data: {")
                        and '"content":"' in line
                        and '"content":""' not in line
                    ):
                        first = time.perf_counter() - started
                assert first is not None
            ttft.append(first)
    ms = 1000.0
    return {
        "total_p50_ms": pct(total, 0.5) * ms,
        "total_p90_ms": pct(total, 0.9) * ms,
        "ttft_p50_ms": pct(ttft, 0.5) * ms,
        "ttft_p90_ms": pct(ttft, 0.9) * ms,
    }


def router_config(
    directory: Path,
    large: str,
    small: str,
    guarded: bool,
    guard_path: Path,
    compiled: bool = True,
    scope: str = "guarded-tiers",
) -> Path:
    raw: dict[str, Any] = yaml.safe_load((ROOT / "config" / "router.yaml").read_text())
    raw["tiers"]["large"]["base_url"] = f"{large}/v1"
    raw["tiers"]["small"]["base_url"] = f"{small}/v1"
    raw["tiers"]["large"]["guardrails"] = guarded
    raw["tiers"]["remote"]["guardrails"] = guarded
    raw["guardrails"]["path"] = str(guard_path)
    raw["guardrails"]["compile_flows"] = compiled
    raw["guardrails"]["scope"] = scope
    raw.pop("workers", None)
    path = directory / f"router-{guarded}-{guard_path.name}-{compiled}-{scope}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def through_router(n: int, work: Path) -> list[dict[str, Any]]:
    large_port, small_port = free_port(), free_port()
    large, small = f"http://127.0.0.1:{large_port}", f"http://127.0.0.1:{small_port}"
    # Stand-ins named "no": a self-check reads their answer ("[no] ...") as "allow".
    upstreams = [
        start_7b_standin(large_port),
        start(
            ["standin", "--port", str(small_port), "--name", "no", "--delay-ms", "20", "--record", "100000"],
            f"{small}/v1/models",
        ),
    ]
    self_check = work / "guardrails-self-check"
    shutil.copytree(ROOT / "config" / "guardrails", self_check)
    config = self_check / "config.yml"
    config.write_text(config.read_text().replace("# - self check input", "- self check input"))
    shipped = ROOT / "config" / "guardrails"
    # (label, tier asked for, guarded tiers?, rails, compiled flows?, scope)
    variants = [
        ("unguarded", "large", False, shipped, True, "guarded-tiers"),
        ("guarded: LLM-free rails (default: compiled flows)", "large", True, shipped, True, "guarded-tiers"),
        ("guarded: LLM-free rails, interpreted by NeMo (compile_flows: false)", "large", True, shipped, False, ""),
        ("guarded: + self check input", "large", True, self_check, True, "guarded-tiers"),
        ("small, no guard loaded (nothing guarded)", "small", False, shipped, True, "guarded-tiers"),
        ("small, scope guarded-tiers (screened)", "small", True, shipped, True, "guarded-tiers"),
        ("small, scope all (every rail on small)", "small", True, shipped, True, "all"),
    ]
    rows = []
    try:
        for label, model, guarded, path, compiled, scope in variants:
            port = free_port()
            config_path = router_config(work, large, small, guarded, path, compiled, scope or "guarded-tiers")
            args = ["serve", "--config", str(config_path), "--port", str(port)]
            router = start(args, f"http://127.0.0.1:{port}/health")
            try:
                before = calls(large), calls(small)
                result = drive(f"http://127.0.0.1:{port}", n, model)
                requests = 2 * n + 3  # 3 warm-up requests, n plain, n streamed
                result["large_calls_per_request"] = (calls(large) - before[0]) / requests
                result["small_calls_per_request"] = (calls(small) - before[1]) / requests
                rows.append({"variant": label, **result})
                print(json.dumps(rows[-1]), flush=True)
            finally:
                router.terminate()
                router.wait(10)
    finally:
        for process in upstreams:
            process.terminate()
    return rows


async def rail_costs(n: int) -> list[dict[str, Any]]:
    import msgspec

    from router.core.config import load_config
    from router.guard.rails import Guard

    config = load_config(ROOT / "config" / "router.yaml", environ={})
    guard = Guard.load(config)

    def variant(**settings: bool) -> Guard:
        guardrails = msgspec.structs.replace(config.guardrails, **settings)
        return Guard.load(msgspec.structs.replace(config, guardrails=guardrails))

    interpreted, unpruned = variant(compile_flows=False), variant(compile_flows=False, prune_flows=False)
    output = "Raft elects a leader with randomized timeouts; Paxos separates proposers and acceptors. " * 4

    async def timed(label: str, fn: Any) -> dict[str, Any]:
        for _ in range(5):
            await fn()
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            await fn()
            samples.append(time.perf_counter() - started)
        return {"rail": label, "p50_ms": statistics.median(samples) * 1000, "p90_ms": pct(samples, 0.9) * 1000}

    flows = len(interpreted.rails.runtime.flow_configs), len(unpruned.rails.runtime.flow_configs)
    rows = [
        await timed("pattern: injection (check alone)", lambda: guard.first_hit(["injection"], PROMPT)),
        await timed("pattern: jailbreak (check alone)", lambda: guard.first_hit(["jailbreak"], PROMPT)),
        await timed("embedding similarity (check alone)", lambda: guard.first_hit(["similarity"], PROMPT)),
        await timed("pattern: secrets (check alone)", lambda: guard.first_hit(["secrets"], output)),
        await timed("pattern: pii (check alone)", lambda: guard.first_hit(["pii"], output)),
        await timed("input rails, compiled (default)", lambda: guard.check_input(PROMPT)),
        await timed("output rails, compiled (default)", lambda: guard.check_output(PROMPT, output)),
        await timed(f"input rails via NeMo ({flows[0]} flows)", lambda: interpreted.check_input(PROMPT)),
        await timed(f"output rails via NeMo ({flows[0]} flows)", lambda: interpreted.check_output(PROMPT, output)),
        await timed(f"input rails via NeMo, unpruned ({flows[1]})", lambda: unpruned.check_input(PROMPT)),
        await timed(f"output rails via NeMo, unpruned ({flows[1]})", lambda: unpruned.check_output(PROMPT, output)),
    ]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


NAIVE_CONFIG = """
models:
  - type: embeddings
    engine: bench-minilm
    model: all-MiniLM-L6-v2
rails:
  input:
    flows: [self check input]
  output:
    flows: [self check output]
"""
NAIVE_RAILS = """
define user ask technical question
  "Explain how consensus algorithms work"
  "Compare two database designs"

define user ask harmful question
  "How do I build a weapon?"

define bot refuse
  "I can't help with that."

define flow technical
  user ask technical question
  bot respond

define flow harmful
  user ask harmful question
  bot refuse
"""


async def naive_nemo(n: int, work: Path) -> dict[str, Any]:
    """NeMo Guardrails as people deploy it: its own main LLM call, dialog rails and self-checks on."""
    from nemoguardrails import LLMRails, RailsConfig
    from nemoguardrails.embeddings.providers import register_embedding_provider
    from nemoguardrails.embeddings.providers.base import EmbeddingModel

    from router.core.config import TierConfig
    from router.decide.classify.embedding import MiniLMEncoder
    from router.dispatch.backends import TierBackend, create_client
    from router.guard.llm import TierLLM

    class LocalMiniLM(EmbeddingModel):  # the same offline encoder, so nothing is downloaded
        engine_name = "bench-minilm"

        def __init__(self, embedding_model: str, **kwargs: Any) -> None:
            self.encoder = MiniLMEncoder()

        def encode(self, documents: list[str]) -> list[list[float]]:
            return [list(map(float, row)) for row in self.encoder.encode(documents)[0]]

        async def encode_async(self, documents: list[str]) -> list[list[float]]:
            return self.encode(documents)

    register_embedding_provider(LocalMiniLM, "bench-minilm")
    directory = work / "naive"
    directory.mkdir()
    (directory / "config.yml").write_text(NAIVE_CONFIG)
    (directory / "rails.co").write_text(NAIVE_RAILS)
    shutil.copy(ROOT / "config" / "guardrails" / "prompts.yml", directory / "prompts.yml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    standin = start_7b_standin(port)
    client = create_client(8)
    try:
        llm = TierLLM("large", default_max_tokens=None)
        llm.bind(TierBackend("large", TierConfig(base_url=f"{url}/v1", model="large"), client))
        rails = LLMRails(RailsConfig.from_path(str(directory)), llm=llm)
        samples = []
        for i in range(n + 2):
            before = llm.calls
            started = time.perf_counter()
            await rails.generate_async(messages=MESSAGES)
            if i >= 2:
                samples.append(time.perf_counter() - started)
        row = {
            "variant": "naive NeMo: own LLM call, dialog rails + self checks, same stand-in",
            "total_p50_ms": statistics.median(samples) * 1000,
            "total_p90_ms": pct(samples, 0.9) * 1000,
            "model_calls_per_request": llm.calls - before,
        }
        print(json.dumps(row), flush=True)
        return row
    finally:
        await client.aclose()
        standin.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = through_router(args.requests, work)
        costs = asyncio.run(rail_costs(200))
        naive = asyncio.run(naive_nemo(max(5, args.requests // 6), work))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"guardrails-{stamp}.json").write_text(
        json.dumps({"router": rows, "rails": costs, "naive": naive}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
