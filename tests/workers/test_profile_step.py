"""bench/profile_step.py: its trace attribution on a hand-made trace, and its CPU smoke run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.step_trace import ENGINE, UNMAPPED, attribute
from tests.helpers import REPO


def span(cat: str, name: str, ts: float, dur: float, tid: int = 1, **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "args": args}


def test_kernels_go_to_the_innermost_part_around_their_launch_and_graph_kernels_by_name() -> None:
    eager = {
        "traceEvents": [
            span("user_annotation", "part:attention", 0, 100),
            span("user_annotation", "part:matmul", 10, 20),  # q_proj inside the attention module
            span("cuda_runtime", "cudaLaunchKernel", 12, 1, correlation=1),
            span("cuda_runtime", "cudaLaunchKernel", 40, 1, correlation=2),
            span("cuda_runtime", "cudaLaunchKernel", 50, 1, correlation=3),
            span("user_annotation", "part:norm", 200, 10),
            span("cuda_runtime", "cudaLaunchKernel", 205, 1, correlation=4),
            span("cuda_runtime", "cudaLaunchKernel", 300, 1, correlation=5),  # after the model: sampling
            span("kernel", "gemv_4bit", 20, 30, tid=7, correlation=1),
            span("kernel", "fmha_cutlassF_bf16", 50, 10, tid=7, correlation=2),
            span("kernel", "elementwise_mul", 60, 5, tid=7, correlation=3),  # rotary, inside attention
            span("kernel", "elementwise_mul", 210, 5, tid=7, correlation=4),
            span("kernel", "argmax", 310, 4, tid=7, correlation=5),
        ]
    }
    parts, names, busy = attribute(eager)
    assert parts == {"matmul": 30, "attention": 10, "attention: other": 5, "norm": 5, ENGINE: 4}
    assert names["elementwise_mul"] == {"attention: other": 5, "norm": 5}
    assert busy == 30 + 10 + 5 + 5 + 4
    replay = {
        "traceEvents": [
            span("cuda_runtime", "cudaGraphLaunch", 0, 5, correlation=9),
            span("kernel", "gemv_4bit", 10, 60, tid=7, correlation=9),
            span("kernel", "elementwise_mul", 70, 20, tid=7, correlation=9),  # half norm, half attention: other
            span("kernel", "never_seen", 80, 10, tid=7, correlation=9),  # overlaps the one before: busy counts it once
            span("cuda_runtime", "cudaLaunchKernel", 100, 1, correlation=10),
            span("kernel", "argmax", 120, 4, tid=7, correlation=10),
        ]
    }
    parts, _, busy = attribute(replay, names)
    assert parts == {"matmul": 60, "attention: other": 10, "norm": 10, UNMAPPED: 10, ENGINE: 4}
    assert busy == 60 + 20 + 4


@pytest.mark.slow
def test_the_smoke_run_profiles_every_setup_on_the_cpu(checkpoint_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "bench" / "profile_step.py"), "--smoke", "--out", str(out)]
    done = subprocess.run(
        [*command, "--checkpoints", str(checkpoint_dir)], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in (out / "profile_step.jsonl").read_text().splitlines()]
    checks = [r["check"] for r in results if "check" in r]
    assert len(checks) == 1 and checks[0]["qkv weights bit-exact"] and checks[0]["gate_up weights bit-exact"]
    rows = [r for r in results if "graphs" in r]
    setups = {(r["model"], r["setup"], r["rows"]) for r in rows}
    assert setups == {
        (model, setup, rows)
        for model, names in (
            ("tiny-nf4", ("unfused, bnb heuristic", "fused, bnb heuristic", "fused, measured kernels")),
            ("tiny-bf16", ("unfused", "fused")),
        )
        for setup in names
        for rows in (1, 2)
    }
    for row in rows:
        eager = row["eager"]
        assert eager["parts_ms"]["matmul"] > 0 and eager["parts_ms"]["norm"] > 0, "the hooks marked the parts"
        assert row["graphs"]["step_ms"] > 0
    assert done.stdout.rstrip().splitlines()[-1].startswith("tiny-bf16  fused"), "the tables come last"
