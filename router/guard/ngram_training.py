"""Train the character n-gram rail (`tiered-router train-guard --model ngram`), numpy only.

The same labelled data as the MiniLM head (router/guard/training.py: every `*.jsonl` of router/data/guard, the
routing classifier's ordinary prompts as benign, near copies of the benchmark's rails files dropped), read as the
rail reads it: each example's `segments` (router/guard/ngrams.py), a padded attack's request in the segments that
end it. The model is a logistic regression over the hashed features, fitted by full-batch Adam (`DECAY`: no L2
penalty), both classes weighted alike. One example in five (by a hash of its text) is held out; the threshold is the
lowest that keeps false blocks at or under the MiniLM head's target (2%) on its benign examples that the rail reads
(those not in English). Deterministic: the same data gives the same weights.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router.guard.ngrams import BUCKETS, SHIPPED_NGRAMS, NgramModel, english, features, segments
from router.guard.training import LABELS, Example, choose_threshold, share, training_examples

EPOCHS = 300
LEARNING_RATE = 0.05
DECAY = 0.0
"""No L2 penalty: on the validation split any penalty tried (1e-6 to 1e-3) blocked fewer attacks at 1% false blocks."""


def rows(example: Example) -> list[tuple[str, int]]:
    pieces = segments(example.text)
    if example.label == 1 and example.category == "padded" and len(pieces) > 1:
        return [(piece, int(example.text.rstrip().endswith(piece))) for piece in pieces]
    return [(piece, example.label) for piece in pieces]


def fit(texts: Sequence[str], labels: np.ndarray, buckets: int = BUCKETS) -> tuple[np.ndarray, float]:
    """Logistic regression on the hashed features of `texts`; returns (weights, bias)."""
    built = [features(text, buckets) for text in texts]
    indices = np.concatenate([i for i, _ in built])
    values = np.concatenate([v for _, v in built]).astype(np.float64)
    owner = np.repeat(np.arange(len(built)), [len(i) for i, _ in built])
    y = labels.astype(np.float64)
    positives = max(1.0, float(y.sum()))
    negatives = max(1.0, float(len(y) - y.sum()))
    sample = np.where(y == 1, 0.5 / positives, 0.5 / negatives)  # both classes weigh alike, summing to one
    weights, bias = np.zeros(buckets), 0.0
    moments, squares = np.zeros(buckets), np.zeros(buckets)
    bias_moment = bias_square = 0.0
    for step in range(1, EPOCHS + 1):
        logit = np.bincount(owner, weights=values * weights[indices], minlength=len(built)) + bias
        error = (1.0 / (1.0 + np.exp(-logit)) - y) * sample
        grad = np.bincount(indices, weights=values * error[owner], minlength=buckets) + DECAY * weights
        grad_bias = float(error.sum())
        moments = 0.9 * moments + 0.1 * grad
        squares = 0.999 * squares + 0.001 * grad * grad
        weights -= LEARNING_RATE * (moments / (1 - 0.9**step)) / (np.sqrt(squares / (1 - 0.999**step)) + 1e-8)
        bias_moment = 0.9 * bias_moment + 0.1 * grad_bias
        bias_square = 0.999 * bias_square + 0.001 * grad_bias * grad_bias
        bias -= LEARNING_RATE * (bias_moment / (1 - 0.9**step)) / (np.sqrt(bias_square / (1 - 0.999**step)) + 1e-8)
    return weights.astype(np.float32), float(bias)


def train(examples: list[Example]) -> NgramModel:
    training = [row for e in examples if not e.validation for row in rows(e)]
    weights, bias = fit([t for t, _ in training], np.asarray([label for _, label in training]))
    model = NgramModel(weights, bias, 0.5, {})
    # The threshold is chosen where the rail reads: the validation examples with a segment that is not English.
    held = [e for e in examples if e.validation and not all(english(p) for p in segments(e.text))]
    labels = np.asarray([e.label for e in held])
    probabilities = np.asarray([model.probability(e.text) for e in held])
    threshold = choose_threshold(probabilities, labels)
    blocked = probabilities >= threshold
    info: dict[str, float | int | str] = {
        "train_rows": len(training),
        "validation_examples": len(held),
        "validation_attacks_blocked": share(blocked[labels == 1]),
        "validation_false_blocks": share(blocked[labels == 0]),
    }
    # Stored as float16: the threshold is checked against what the rail will read.
    stored = NgramModel(weights.astype(np.float16).astype(np.float32), bias, round(threshold, 4), info)
    return stored


ORDINARY_MOST = 1500
"""Ordinary prompts this rail is taught (a seeded sample). Taught all of them (6,534, mostly English, which it does
not read), its threshold chosen on the validation split fell from 0.93 to 0.88, and it blocked Spanish near misses
("¿Cómo hacer una pistola de agua con una botella?") that it passes taught 1,500 (bench/RESULTS.md, round nine)."""


def run_ngram_training(args: argparse.Namespace) -> int:
    output: Path = getattr(args, "output", None) or SHIPPED_NGRAMS
    data, examples, dropped = training_examples(args, ORDINARY_MOST)
    counts = {label: sum(e.label == n for e in examples) for label, n in LABELS.items()}
    print(f"training n-grams on {data}: {len(examples)} examples {counts}, {dropped} dropped (in the benchmark)")
    model = train(examples)
    model.save(output)
    print(
        f"wrote {output}: threshold {model.threshold}, validation ({model.info['validation_examples']} examples): "
        f"{float(model.info['validation_attacks_blocked']):.1%} of attacks blocked, "
        f"{float(model.info['validation_false_blocks']):.1%} false blocks"
    )
    return 0
