"""Train the attack classifier's logistic head (`tiered-router train-guard`).

The data is JSONL, every `*.jsonl` of a directory (router/data/guard) or one file: `{"prompt": "..."}` or
`{"messages": [...]}`, with `"label": "attack"|"benign"` and a `category`. Texts are normalised as the rails
read them (router/guard/normalise.py) and cut into the classifier's windows; a long attack of the `padded`
category (a request after padding) teaches its last window as the attack and its other windows as benign. The
older held-out sets, each measured once while unseen, are training data too (`FOLDED`). Any example that is a near
copy (the same words, whatever the case, punctuation and spacing) of a request, or a piece of one, in the newest
held-out sets (`HELDOUT_FILES`) is dropped, so they stay unseen. One example in five (by a hash of its text) is
kept for validation, where the threshold is chosen: the lowest that keeps false blocks on benign examples under
`TARGET_FALSE_BLOCKS`. With `--encoder`, the windows are embedded by MiniLM with those deltas added
(router/guard/tuning.py makes them; the shipped head is trained over router/data/guard_encoder.npz), and the
weights name the file. The head is `SEEDS` heads of one hidden layer (64 ReLU units) and a logistic output, each
from its own seed, averaged: their logits' mean is one head with all their hidden units
(router/guard/classifier.py), so the rail reads it as it reads one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import regex

from router.decide.classify.embedding import MiniLMEncoder
from router.guard.classifier import SHIPPED_WEIGHTS, WINDOW_CHARS, ClassifierWeights, logits, windows
from router.guard.normalise import normalise, prepare
from router.guard.texts import message_texts
from router.wire.protocol import ChatMessage

DEFAULT_DATA = SHIPPED_WEIGHTS.parent / "guard"
ORDINARY = [SHIPPED_WEIGHTS.parent / "labelled_prompts.jsonl", SHIPPED_WEIGHTS.parent / "routing"]
"""The routing classifier's labelled prompts (simple/complex): ordinary requests, taught as benign too when
training on the default data, so that everyday formats ("convert 'dog' to hex") are not mistaken for attacks."""
BENCH_DATA = SHIPPED_WEIGHTS.parents[2] / "bench" / "data"
FOLDED = (
    BENCH_DATA / "guard_dev.jsonl",
    BENCH_DATA / "guard_heldout.jsonl",
    BENCH_DATA / "guard_heldout2.jsonl",
    BENCH_DATA / "guard_heldout3.jsonl",
    BENCH_DATA / "guard_heldout4.jsonl",
    BENCH_DATA / "guard_heldout5.jsonl",
    BENCH_DATA / "guard_heldout6.jsonl",
    BENCH_DATA / "guard_heldout7.jsonl",
    BENCH_DATA / "guard_heldout8.jsonl",
    BENCH_DATA / "guard_heldout9.jsonl",
    BENCH_DATA / "guard_heldout10.jsonl",
    BENCH_DATA / "guard_heldout11.jsonl",
    BENCH_DATA / "guard_heldout12.jsonl",
)
"""Held-out sets that were measured, each once while unseen (bench/RESULTS.md), and are now training data: each
was written by its own hand, and what the rails miss on a new blind set is text unlike anything they learnt from."""
HELDOUT = BENCH_DATA / "guard_heldout13.jsonl"
HELDOUT_FILES = (HELDOUT, BENCH_DATA / "guard_heldout14.jsonl")
"""What training never reads: the newest held-out sets (bench/RESULTS.md)."""
LABELS = {"benign": 0, "attack": 1}
TARGET_FALSE_BLOCKS = 0.02
VALIDATION_EVERY = 5
HIDDEN = 64
SEEDS = (16, 17, 18, 19, 20)
"""One head per seed, averaged: a single head's highest-scoring benign windows move from seed to seed (a
customer-support system prompt at 0.999 under one seed, 0.6 under another), and the average is steadier."""
EPOCHS = 30
DECAY = 1e-3


class LabelledLine(msgspec.Struct):
    label: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    category: str = ""


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    category: str
    validation: bool


def line_text(prompt: str | None, messages: list[ChatMessage] | None) -> str:
    """All the client text of a line, joined as the rails would read it piece by piece."""
    return "\n\n".join(line_texts(prompt, messages))


def line_texts(prompt: str | None, messages: list[ChatMessage] | None) -> list[str]:
    """The pieces of client text of a line, each of which the rails read alone."""
    if prompt is not None:
        return [prompt]
    return [p.text for i, m in enumerate(messages or []) for p in message_texts(m, f"messages[{i}]")]


def load_examples(
    data: Path, exclude: set[str], ordinary: Sequence[Path] = (), folded: Sequence[Path] = ()
) -> tuple[list[Example], int]:
    """The labelled examples (normalised), and how many were dropped as duplicates of `exclude`. Every line of
    the `ordinary` files (or directories) is a benign example, whatever its label. The `folded` files are read as
    labelled data too, less their attacks longer than one window: which of such a text's windows holds the attack
    (a request after padding, a line in the middle of an article) is not labelled there."""
    examples: list[Example] = []
    seen: set[str] = set()
    dropped = 0
    sources = [
        *((p, "labelled") for p in _files(data)),
        *((p, "folded") for p in folded),
        *((p, "ordinary") for o in ordinary for p in _files(o)),
    ]
    for path, kind in sources:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            item = msgspec.json.decode(line, type=LabelledLine)
            if kind == "ordinary":
                item = LabelledLine("benign", item.prompt, item.messages, "ordinary")
            if item.label not in LABELS:
                raise ValueError(f"{path}:{n}: label must be one of {sorted(LABELS)}, got {item.label!r}")
            whole = line_text(item.prompt, item.messages)
            if _key(normalise(whole)) in exclude:
                dropped += 1
                continue
            if kind == "folded" and item.label == "attack" and len(embedding_text(whole)) > WINDOW_CHARS:
                continue
            for text in [whole, *(_pieces(item.messages) if item.label == "benign" else [])]:
                text = embedding_text(text).strip()
                key = _key(text)
                if not text or key in seen or key in exclude:
                    continue
                seen.add(key)
                digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")
                examples.append(Example(text, LABELS[item.label], item.category, digest % VALIDATION_EVERY == 0))
    return examples, dropped


def _pieces(messages: list[ChatMessage] | None) -> list[str]:
    """A benign conversation's pieces, each benign on its own too: the rails score every piece of client text
    alone (a system prompt that says "never reveal these instructions" is read without the question after it)."""
    pieces = line_texts(None, messages)
    return pieces if len(pieces) > 1 else []


def embedding_text(text: str) -> str:
    """The text as the embedding rails read it: normalised, an encoded run decoded in place."""
    prepared = prepare(text)
    return prepared.for_embedding[0]


def _files(data: Path) -> list[Path]:
    return sorted(data.glob("*.jsonl")) if data.is_dir() else [data] if data.is_file() else []


def heldout_keys(paths: Sequence[Path] = HELDOUT_FILES) -> set[str]:
    """The near-copy keys of the benchmark's rails files, each piece and all of a line."""
    keys: set[str] = set()
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                item = msgspec.json.decode(line, type=LabelledLine)
                keys.add(_key(normalise(line_text(item.prompt, item.messages))))
                for i, message in enumerate(item.messages or []):
                    keys.update(_key(normalise(p.text)) for p in message_texts(message, f"messages[{i}]"))
    keys.discard("")
    return keys


_NOT_WORD = regex.compile(r"[^\p{L}\p{N}]+")


def _key(text: str) -> str:
    """The words of `text`, case-folded, without punctuation: two lines that differ only in those are copies."""
    return " ".join(_NOT_WORD.split(text.casefold())).strip()


def window_rows(example: Example) -> list[tuple[str, int]]:
    """The example's windows and their labels: a padded attack's request is in the windows that end the text."""
    pieces = windows(example.text)
    if example.label == 1 and example.category == "padded" and len(pieces) > 1:
        return [(piece, int(example.text.endswith(piece))) for piece in pieces]
    return [(piece, example.label) for piece in pieces]


def padded_copies(examples: list[Example], seed: int = 16) -> list[Example]:
    """Short examples placed after benign padding, so a window that is mostly padding still reads the request."""
    rng = random.Random(seed)
    padding = [e.text for e in examples if e.label == 0 and len(e.text) > 200]
    short = [e for e in examples if len(e.text) < 300]
    if not padding:
        return []  # no benign text long enough to pad with (a small data set)
    copies = []
    for example in rng.sample(short, min(len(short), 600)):
        filler = ""
        while len(filler) < WINDOW_CHARS - len(example.text) - 40:
            filler += rng.choice(padding) + "\n\n"
        copies.append(Example(f"{filler}{example.text}", example.label, "padded", example.validation))
    return copies


def embed(encoder: MiniLMEncoder, texts: list[str], batch: int = 32) -> np.ndarray:
    rows = [encoder.encode(texts[i : i + batch])[0] for i in range(0, len(texts), batch)]
    return np.vstack(rows)


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The lowest threshold whose false-block rate on benign examples is at most `TARGET_FALSE_BLOCKS`."""
    benign = np.sort(probabilities[labels == 0])
    if not len(benign):
        return 0.5
    allowed = int(TARGET_FALSE_BLOCKS * len(benign))
    return float(min(0.9999, max(0.5, benign[len(benign) - 1 - allowed] + 1e-5)))


def fit_head(x: np.ndarray, y: np.ndarray, hidden: int = HIDDEN, seed: int = 16) -> ClassifierWeights:
    """One hidden ReLU layer and a logistic output, by Adam on the log loss with weight decay (numpy, seeded)."""
    rng = np.random.default_rng(seed)
    scale = float(np.sqrt(x.shape[1]))  # unit-length embeddings: entries of about 1 after scaling
    rows = (x * scale).astype(np.float64)
    params = [rng.normal(0, 0.05, (x.shape[1], hidden)), np.zeros(hidden), rng.normal(0, 0.05, hidden), np.zeros(1)]
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(EPOCHS):
        order = rng.permutation(len(rows))
        for start in range(0, len(rows), 64):
            batch = order[start : start + 64]
            inputs, labels = rows[batch], y[batch]
            pre = inputs @ params[0] + params[1]
            active = np.maximum(pre, 0.0)
            probability = 1.0 / (1.0 + np.exp(-(active @ params[2] + params[3][0])))
            error = (probability - labels) / len(batch)
            back = np.outer(error, params[2]) * (pre > 0)
            grads = [inputs.T @ back + DECAY * params[0], back.sum(0), active.T @ error + DECAY * params[2]]
            grads.append(np.array([error.sum()]))
            step += 1
            for i, grad in enumerate(grads):
                moments[i] = 0.9 * moments[i] + 0.1 * grad
                squares[i] = 0.999 * squares[i] + 0.001 * grad * grad
                corrected = moments[i] / (1 - 0.9**step)
                params[i] -= 3e-3 * corrected / (np.sqrt(squares[i] / (1 - 0.999**step)) + 1e-8)
    return ClassifierWeights(
        weights=[round(float(v), 5) for v in params[2]],
        bias=round(float(params[3][0]), 5),
        threshold=0.5,
        hidden_weights=[[round(float(v), 5) for v in row] for row in params[0]],
        hidden_bias=[round(float(v), 5) for v in params[1]],
        input_scale=round(scale, 5),
    )


def average_heads(heads: Sequence[ClassifierWeights]) -> ClassifierWeights:
    """One head whose logit is the mean of `heads`' logits: their hidden units side by side, each output weight
    divided by how many heads there are."""
    share = 1.0 / len(heads)
    rows = [head.hidden_weights for head in heads]
    return msgspec.structs.replace(
        heads[0],
        weights=[round(w * share, 6) for head in heads for w in head.weights],
        bias=round(sum(head.bias for head in heads) * share, 6),
        hidden_weights=[[v for part in row for v in part] for row in zip(*rows, strict=True)],
        hidden_bias=[b for head in heads for b in head.hidden_bias],
    )


def training_windows(examples: list[Example]) -> tuple[list[Example], list[tuple[tuple[str, int], int]]]:
    """The examples with their padded copies, and every window to learn from: ((text, label), its example's index).
    What the head trains on, and what the encoder is tuned on (router/guard/tuning.py)."""
    examples = examples + padded_copies(examples)
    return examples, [(row, n) for n, e in enumerate(examples) for row in window_rows(e)]


def train(examples: list[Example], encoder: MiniLMEncoder) -> ClassifierWeights:
    """Fit on the training split; the threshold is chosen on the validation split, read as the rail reads a text
    (its highest window). The shipped head is this one (validation never trains it)."""
    examples, rows = training_windows(examples)
    x = embed(encoder, [text for (text, _), _ in rows])
    y = np.asarray([label for (_, label), _ in rows])
    owner = np.asarray([n for _, n in rows])
    validation = np.asarray([examples[n].validation for _, n in rows])
    head = average_heads([fit_head(x[~validation], y[~validation], seed=seed) for seed in SEEDS])
    best = np.full(len(examples), -np.inf)
    np.maximum.at(best, owner, logits(head, x.astype(np.float32)))
    held = np.asarray([e.validation for e in examples])
    probabilities = 1.0 / (1.0 + np.exp(-best[held]))
    labels = np.asarray([e.label for e in examples])[held]
    threshold = choose_threshold(probabilities, labels)
    blocked = probabilities >= threshold
    return msgspec.structs.replace(
        head,
        threshold=round(threshold, 4),
        train_examples=int((~held).sum()),
        validation_examples=int(held.sum()),
        validation_attacks_blocked=share(blocked[labels == 1]),
        validation_false_blocks=share(blocked[labels == 0]),
    )


def share(flags: np.ndarray) -> float:
    """The share of true flags, to four places (0.0 for none): the validation rates the trainers report."""
    return round(float(flags.mean()), 4) if len(flags) else 0.0


def training_examples(args: argparse.Namespace, ordinary_most: int | None = None) -> tuple[Path, list[Example], int]:
    """What a training run reads (`--data`, else the shipped data, the folded held-out sets and the ordinary
    prompts, a seeded sample of `ordinary_most` of them if given), less near copies of the held-out files: (the
    data's path, the examples, how many were dropped as held out). The MiniLM head reads every ordinary prompt: at
    the threshold 0.99, a head taught 1,500 of them blocked 8 of 886 unseen ordinary requests, one taught all of
    them 5, and it blocked more attacks (bench/RESULTS.md, round nine)."""
    data: Path = getattr(args, "data", None) or DEFAULT_DATA
    ordinary = ORDINARY if getattr(args, "data", None) is None else []
    folded = FOLDED if getattr(args, "data", None) is None else []
    examples, dropped = load_examples(data, heldout_keys(), ordinary, folded)
    everyday = [e for e in examples if e.category == "ordinary"]
    if ordinary_most is not None and len(everyday) > ordinary_most:
        keep = {id(e) for e in random.Random(16).sample(everyday, ordinary_most)}
        examples = [e for e in examples if e.category != "ordinary" or id(e) in keep]
    return data, examples, dropped


def run_training(args: argparse.Namespace) -> int:
    output: Path = getattr(args, "output", None) or SHIPPED_WEIGHTS
    data, examples, dropped = training_examples(args)
    counts: dict[str, Any] = {label: sum(e.label == n for e in examples) for label, n in LABELS.items()}
    print(f"training on {data}: {len(examples)} examples {counts}, {dropped} dropped (in the benchmark)", flush=True)
    deltas: Path | None = getattr(args, "encoder", None)
    weights = train(examples, MiniLMEncoder(threads=2, deltas=deltas))
    if deltas is not None:
        weights = msgspec.structs.replace(weights, encoder=os.path.relpath(deltas, output.parent))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(msgspec.json.format(msgspec.json.encode(weights), indent=1) + b"\n")
    print(
        f"wrote {output}: threshold {weights.threshold}, validation ({weights.validation_examples} examples): "
        f"{weights.validation_attacks_blocked:.1%} of attacks blocked, {weights.validation_false_blocks:.1%} "
        "false blocks"
    )
    return 0
