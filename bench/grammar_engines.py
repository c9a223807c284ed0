"""llguidance against xgrammar on SmolLM2-135M-Instruct's vocabulary, on the CPU: tokenizer set-up, compiling the
tests' JSON schema, and the per-token cost of computing a mask and applying it to a row of logits, along one
valid answer.

    python bench/grammar_engines.py [--xgrammar-path DIR]

xgrammar is not a project dependency; pass a folder it was installed into (`uv pip install --target DIR
xgrammar --no-deps apache-tvm-ffi`) to measure it too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.core.workers import var_dir  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
ANSWER = '{"name": "Marie Curie, physicist and chemist", "age": 66, "tags": ["radium", "polonium", "Nobel"]}'


REPEATS = 7
"""The machine may be shared: each figure is the best of this many runs."""


def summary(setup: float, compiles: list[float], fills: list[float], applies: list[float]) -> dict[str, float]:
    return {
        "setup_s": setup,
        "compile_ms": 1000 * min(compiles),
        "fill_ms": 1000 * min(fills),
        "apply_ms": 1000 * min(applies),
    }


def llguidance_case(tokenizer: Any, answer: list[int]) -> dict[str, float]:
    from workers.grammar import GrammarCompiler, GrammarMasks

    started = time.perf_counter()
    compiler = GrammarCompiler(tokenizer, len(tokenizer))
    setup = time.perf_counter() - started
    compiles, fills, applies = [], [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        constraint = compiler.json_schema(SCHEMA)
        compiles.append(time.perf_counter() - started)
        logits = torch.zeros(1, len(tokenizer))
        masks = GrammarMasks(1, len(tokenizer), logits.device)
        fill = apply = 0.0
        for token in answer:
            logits.zero_()
            started = time.perf_counter()
            masks.fill([constraint])
            filled = time.perf_counter()
            masks.apply(logits, [0])
            fill, apply = fill + filled - started, apply + time.perf_counter() - filled
            assert logits[0, token] == 0, "the answer is allowed"
            constraint.accept(token)
        fills.append(fill / len(answer))
        applies.append(apply / len(answer))
    return summary(setup, compiles, fills, applies)


def xgrammar_case(tokenizer: Any, answer: list[int]) -> dict[str, float]:
    import xgrammar as xgr

    started = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    compiler = xgr.GrammarCompiler(info)
    setup = time.perf_counter() - started
    compiles, fills, applies = [], [], []
    for _ in range(REPEATS):
        compiler.clear_cache()  # each repeat compiles afresh, as llguidance does
        started = time.perf_counter()
        compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
        compiles.append(time.perf_counter() - started)
        matcher = xgr.GrammarMatcher(compiled)
        logits = torch.zeros(1, len(tokenizer))
        bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
        fill = apply = 0.0
        for token in answer:
            logits.zero_()
            started = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask, 0)
            filled = time.perf_counter()
            xgr.apply_token_bitmask_inplace(logits, bitmask)
            fill, apply = fill + filled - started, apply + time.perf_counter() - filled
            assert logits[0, token] == 0, "the answer is allowed"
            matcher.accept_token(token)
        fills.append(fill / len(answer))
        applies.append(apply / len(answer))
    return summary(setup, compiles, fills, applies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xgrammar-path", type=Path, default=None)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(var_dir() / "checkpoints" / "smollm2-135m-instruct")
    answer = [*tokenizer.encode(ANSWER, add_special_tokens=False), tokenizer.eos_token_id]
    rows = {"llguidance": llguidance_case(tokenizer, answer)}
    if args.xgrammar_path:
        sys.path.append(str(args.xgrammar_path))
        rows["xgrammar"] = xgrammar_case(tokenizer, answer)
    print(f"{len(answer)} tokens along the answer, vocabulary {len(tokenizer)}, torch {torch.__version__}")
    print(f"{'engine':<12}{'set-up s':>10}{'compile ms':>12}{'mask ms/token':>15}{'apply ms/token':>16}")
    for name, row in rows.items():
        print(
            f"{name:<12}{row['setup_s']:>10.2f}{row['compile_ms']:>12.2f}{row['fill_ms']:>15.3f}{row['apply_ms']:>16.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
