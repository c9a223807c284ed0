"""Classifier latency (p50, p99 per request) and held-out accuracy, every classifier, one run.

Scores every prompt of a held-out routing set, by default the newest measured, bench/data/route_heldout12.jsonl (294
labelled conversations that no classifier was trained on; distinct prompts, so no cache can help), timing
each call as the router makes it (`score`, in-process; the router adds one thread hop for the
embedding classifier). Accuracy is at the default threshold 0.5, overall and per category; the
baseline is a length-only rule (last user message >= 70 chars).

    python bench/classifier.py [--repeat 3] [--data bench/data/route_heldout12.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from router.decide.classify.base import ComplexityClassifier
from router.decide.classify.embedding import DEFAULT_WEIGHTS, EmbeddingClassifier, load_weights
from router.decide.classify.heuristic import HeuristicClassifier
from router.decide.classify.static import DEFAULT_HEAD, StaticClassifier, load_head
from router.decide.classify.static_build import read_labelled
from router.decide.classify.training import LABELS
from router.decide.conversation import Conversation
from router.wire.protocol import ChatCompletionRequest

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "bench" / "data" / "route_heldout12.jsonl"


def categories(path: Path) -> list[str]:
    return [json.loads(line).get("category", "-") for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=HELDOUT)
    args = parser.parse_args()
    items = read_labelled([args.data])
    heldout = [Conversation.from_request(ChatCompletionRequest(messages=i.messages), 32_000) for i in items]
    labels = np.array([LABELS[i.label] for i in items])
    cats = np.array(categories(args.data))
    embedding = EmbeddingClassifier(load_weights(DEFAULT_WEIGHTS, "bench"))
    embedding.load()
    static = StaticClassifier(load_head(DEFAULT_HEAD, "bench"))
    static.load()
    classifiers: list[ComplexityClassifier] = [HeuristicClassifier(), embedding, static]
    rows = []
    misses: dict[str, dict[str, int]] = {}
    for classifier in classifiers:
        for conversation in heldout[:20]:  # warm-up
            classifier.score(conversation)
        timings: list[float] = []
        predictions: list[bool] = []
        for _ in range(args.repeat):
            predictions = []
            for conversation in heldout:
                start = time.perf_counter()
                verdict = classifier.score(conversation)
                timings.append(time.perf_counter() - start)
                predictions.append(verdict.score >= 0.5)
        ms = np.array(timings) * 1000
        wrong = np.array(predictions) != (labels == 1)
        misses[classifier.name] = {str(c): int(wrong[cats == c].sum()) for c in sorted(set(cats))}
        rows.append(
            {
                "classifier": classifier.name,
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "heldout_accuracy": float(np.mean(~wrong)),
                "heldout": len(heldout),
            }
        )
    baseline = np.array([len(c.last_user) >= 70 for c in heldout])
    rows.append(
        {
            "classifier": "baseline: last message >= 70 chars",
            "heldout_accuracy": float(np.mean(baseline == (labels == 1))),
        }
    )

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {"machine": f"{platform.node()} {os.cpu_count()} cores", "date": stamp}
    with (out_dir / f"classifier-{stamp}.jsonl").open("w") as fh:
        for row in rows:
            fh.write(json.dumps({**meta, **row}) + "\n")
    print(f"{'classifier':<36} {'p50':>8} {'p99':>8} {'held-out acc':>13}")
    for row in rows:
        p50 = f"{row['p50_ms']:.3f}ms" if "p50_ms" in row else "-"
        p99 = f"{row['p99_ms']:.3f}ms" if "p99_ms" in row else "-"
        print(f"{row['classifier']:<36} {p50:>8} {p99:>8} {row['heldout_accuracy']:>13.3f}")
    names = list(misses)
    print(f"\nmisses per category (of n)\n{'category':<28} {'n':>4} " + " ".join(f"{n:>10}" for n in names))
    for category in sorted(set(cats)):
        counts = " ".join(f"{misses[n][str(category)]:>10}" for n in names)
        print(f"{category:<28} {int((cats == category).sum()):>4} {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
