"""Classifier latency (p50, p99 per request) and held-out accuracy, both classifiers, one run.

Scores every held-out prompt of the shipped labelled set (distinct prompts, so no cache can help),
timing each call as the router makes it (`score`, in-thread; the router adds one thread hop for the
embedding classifier). Accuracy is measured at the default threshold 0.5 on the same held-out part
the training command reports; the baseline is a length-only rule (last message >= 70 chars).

    python bench/classifier.py [--repeat 3]
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
from router.decide.classify.training import DEFAULT_DATA, load_examples

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    examples = load_examples(DEFAULT_DATA)
    heldout = [e for e in examples if e.heldout]
    labels = np.array([e.label for e in heldout])
    embedding = EmbeddingClassifier(load_weights(DEFAULT_WEIGHTS, "bench"))
    embedding.load()
    classifiers: list[ComplexityClassifier] = [HeuristicClassifier(), embedding]
    rows = []
    for classifier in classifiers:
        for example in heldout[:20]:  # warm-up
            classifier.score(example.conversation)
        timings, predictions = [], []
        for _ in range(args.repeat):
            predictions = []
            for example in heldout:
                start = time.perf_counter()
                verdict = classifier.score(example.conversation)
                timings.append(time.perf_counter() - start)
                predictions.append(verdict.score >= 0.5)
        ms = np.array(timings) * 1000
        rows.append(
            {
                "classifier": classifier.name,
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "heldout_accuracy": float(np.mean(np.array(predictions) == (labels == 1))),
                "heldout": len(heldout),
            }
        )
    baseline = np.array([len(e.conversation.last_user) >= 70 for e in heldout])
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
