"""Train the embedding classifier's logistic model on labelled prompts (`tiered-router train-classifier`).

The data is JSONL, one `{"messages": [...], "label": "simple"|"complex"}` per line. One example in
`heldout_every` (chosen by a hash of its text, so the split is stable) is held out, and the accuracy
on it is stored next to the weights.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from router.decide.classify.embedding import (
    DEFAULT_WEIGHTS,
    LogisticWeights,
    MiniLMEncoder,
    conversation_input,
    design_row,
)
from router.decide.classify.features import FEATURE_NAMES
from router.decide.conversation import Conversation
from router.wire.protocol import ChatCompletionRequest, ChatMessage

DEFAULT_DATA = DEFAULT_WEIGHTS.parent / "labelled_prompts.jsonl"
LABELS = {"simple": 0, "complex": 1}


class LabelledExample(msgspec.Struct):
    messages: list[ChatMessage]
    label: str


@dataclass(frozen=True)
class Example:
    conversation: Conversation
    label: int
    heldout: bool


def load_examples(path: Path, heldout_every: int = 5, max_chars: int = 32_000) -> list[Example]:
    examples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        item = msgspec.json.decode(line, type=LabelledExample)
        if item.label not in LABELS:
            raise ValueError(f"{path}:{n}: label must be one of {sorted(LABELS)}, got {item.label!r}")
        conversation = Conversation.from_request(ChatCompletionRequest(messages=item.messages), max_chars)
        digest = int.from_bytes(hashlib.sha256(conversation.text.encode()).digest()[:4], "big")
        examples.append(Example(conversation, LABELS[item.label], digest % heldout_every == 0))
    return examples


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 30) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (the bias is not regularised)."""
    rows, cols = x.shape
    design = np.hstack([x, np.ones((rows, 1))]).astype(np.float64)
    w = np.zeros(cols + 1)
    penalty = np.full(cols + 1, l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        gradient = design.T @ (p - y) + penalty * w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(cols + 1)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w[:-1], float(w[-1])


def accuracy(weights: np.ndarray, bias: float, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(((x @ weights + bias) > 0).astype(int) == y)) if len(y) else 0.0


def embed_examples(encoder: MiniLMEncoder, examples: list[Example], batch: int = 32) -> np.ndarray:
    rows: list[np.ndarray] = []
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        embeddings, _ = encoder.encode([conversation_input(e.conversation) for e in chunk])
        rows.extend(design_row(embeddings[i], e.conversation) for i, e in enumerate(chunk))
    return np.vstack(rows)


def train(examples: list[Example], encoder: MiniLMEncoder, l2: float = 1.0) -> LogisticWeights:
    x = embed_examples(encoder, examples)
    y = np.asarray([e.label for e in examples])
    held = np.asarray([e.heldout for e in examples])
    weights, bias = fit_logistic(x[~held], y[~held], l2)
    return LogisticWeights(
        weights=[round(float(v), 6) for v in weights],
        bias=round(bias, 6),
        features="minilm",
        surface_features=list(FEATURE_NAMES),
        heldout_accuracy=round(accuracy(weights, bias, x[held], y[held]), 4),
        train_examples=int((~held).sum()),
        heldout_examples=int(held.sum()),
    )


def run_training(args: argparse.Namespace) -> int:
    data = args.data or DEFAULT_DATA
    output = args.output or DEFAULT_WEIGHTS
    examples = load_examples(data, args.heldout_every)
    print(f"training on {data}: {len(examples)} examples, one in {args.heldout_every} held out", flush=True)
    weights = train(examples, MiniLMEncoder(threads=2))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(msgspec.json.format(msgspec.json.encode(weights), indent=1) + b"\n")
    print(
        f"wrote {output}: held-out accuracy {weights.heldout_accuracy:.3f} "
        f"({weights.heldout_examples} held out, {weights.train_examples} trained on)"
    )
    return 0
