"""Every rails set's verdicts, one by one, and how long `Guard.scan` takes: to show a change leaves verdicts alone.

    python bench/guard_verdicts.py OUT.json [--compare BEFORE.json]

Runs the shipped LLM-free input rails (config/router.yaml) over each request of the five bench rails files,
sequentially in this process after one warm-up check, and writes {file: [rail or null, ...]} to OUT.json; prints
per file the total time, p50, p99 and the slowest check. `--compare`: also the requests whose verdict differs
from an earlier OUT.json (run it before the change, then after).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

FILES = ("guard_heldout", "guard_heldout2", "guard_heldout3", "guard_heldout4", "guard_dev")


def main() -> None:
    from router.core.config import load_config
    from router.devtools.evaluate import GUARD_LABELS, read_labelled
    from router.guard.rails import Guard
    from router.guard.texts import client_texts

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--compare", type=Path)
    args = parser.parse_args()
    guard = Guard.load(load_config(ROOT / "config" / "router.yaml"))
    checks = [check for rail in guard.compiled["input"] for check in rail.checks]
    guard.scan(checks, ["a warm-up text about bread dough"])
    verdicts: dict[str, list[str | None]] = {}
    for name in FILES:
        examples = read_labelled(ROOT / "bench" / "data" / f"{name}.jsonl", GUARD_LABELS)
        seconds: list[float] = []
        verdicts[name] = []
        for example in examples:
            started = time.perf_counter()
            verdicts[name].append(guard.scan(checks, [piece.text for piece in client_texts(example.request)]))
            seconds.append(time.perf_counter() - started)
        seconds.sort()
        print(
            f"{name}: {len(seconds)} checks in {sum(seconds):.1f} s, p50 {seconds[len(seconds) // 2] * 1e3:.1f} ms, "
            f"p99 {seconds[int(len(seconds) * 0.99)] * 1e3:.0f} ms, slowest {seconds[-1] * 1e3:.0f} ms",
            flush=True,
        )
    args.out.write_text(json.dumps(verdicts) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        for name, now in verdicts.items():
            differ = [(i, a, b) for i, (a, b) in enumerate(zip(before.get(name, []), now, strict=False)) if a != b]
            print(f"{name}: {len(differ)} of {len(now)} verdicts differ {differ[:10]}")


if __name__ == "__main__":
    main()
