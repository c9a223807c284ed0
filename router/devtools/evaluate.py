"""`tiered-router eval route FILE` and `tiered-router eval guard FILE`: score the routing classifier or the
guardrails on labelled JSONL, one `{"prompt": ...}` or `{"messages": [...]}` per line with a `label`
(route: `simple` or `complex`; guard: `attack` or `benign`) and, optionally, a `category`.

Each prints accuracy, the confusion matrix, the rates per category and the latency per prompt (p50, p99), and
can write the same report as JSON. Both run the code a request meets in the router: the configured classifier
and threshold (`router.yaml`'s `classifier`), and the guardrails' LLM-free input rails over every piece of client
text (`Guard.screen`, what every guarded request gets before anything is sent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from router.core.config import Config, load_config
from router.decide.classify.registry import build_classifier
from router.decide.conversation import Conversation
from router.wire.protocol import ChatCompletionRequest, ChatMessage

if TYPE_CHECKING:
    from router.guard.rails import Guard

ROUTE_LABELS = ("simple", "complex")
GUARD_LABELS = ("attack", "benign")


class _Line(msgspec.Struct):
    label: str
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    category: str | None = None
    family: str | None = None
    """How an attack is dressed (unicode, base64, role tag...), reported beside the category when given."""


@dataclass(frozen=True, slots=True)
class Example:
    request: ChatCompletionRequest
    label: str
    category: str
    family: str | None = None


def read_labelled(path: Path, labels: Sequence[str]) -> list[Example]:
    """The examples of a labelled JSONL file; a bad line is a `ValueError` naming its line number."""
    examples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = msgspec.json.decode(line, type=_Line)
        except msgspec.MsgspecError as exc:
            raise ValueError(f"{path}:{n}: {exc}") from exc
        if item.label not in labels:
            raise ValueError(f"{path}:{n}: label {item.label!r} is not one of {', '.join(labels)}")
        messages = item.messages or ([ChatMessage("user", item.prompt)] if item.prompt else None)
        if not messages:
            raise ValueError(f"{path}:{n}: a line needs 'messages' or 'prompt'")
        request = ChatCompletionRequest(messages=messages)
        examples.append(Example(request, item.label, item.category or "(none)", item.family))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


@dataclass
class Report:
    """What an evaluation found: predicted against true labels, per category, and the time each took."""

    kind: str
    labels: tuple[str, str]
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(true, predicted) -> count."""
    per_category: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    """category -> {'n', 'correct', and each predicted label}."""
    per_family: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    seconds: list[float] = field(default_factory=list)
    misses: list[dict[str, str]] = field(default_factory=list)

    def add(self, example: Example, predicted: str, seconds: float, detail: str = "") -> None:
        self.confusion[(example.label, predicted)] += 1
        counts = self.per_category[f"{example.label}/{example.category}"]
        counts["n"] += 1
        counts[predicted] += 1
        counts["correct"] += predicted == example.label
        if example.family is not None:
            family = self.per_family[f"{example.label}/{example.family}"]
            family["n"] += 1
            family["correct"] += predicted == example.label
        self.seconds.append(seconds)
        if predicted != example.label:
            text = example.request.last_user_text() or example.request.messages[-1].text()
            self.misses.append(
                {
                    "label": example.label,
                    "category": example.category,
                    "got": predicted,
                    "detail": detail,
                    "prompt": text[:160],
                }
            )

    @property
    def total(self) -> int:
        return sum(self.confusion.values())

    @property
    def accuracy(self) -> float:
        return sum(n for (true, got), n in self.confusion.items() if true == got) / max(1, self.total)

    def rate(self, true: str, predicted: str) -> float:
        """The share of examples labelled `true` that were predicted `predicted`."""
        n = sum(c for (t, _), c in self.confusion.items() if t == true)
        return self.confusion[(true, predicted)] / n if n else 0.0

    def latency_ms(self) -> dict[str, float]:
        ordered = sorted(self.seconds)
        if not ordered:
            return {"p50": 0.0, "p99": 0.0, "mean": 0.0}
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        return {
            "p50": round(statistics.median(ordered) * 1000, 3),
            "p99": round(p99 * 1000, 3),
            "mean": round(statistics.fmean(ordered) * 1000, 3),
        }

    def as_dict(self) -> dict[str, Any]:
        a, b = self.labels
        return {
            "kind": self.kind,
            "examples": self.total,
            "accuracy": round(self.accuracy, 4),
            "confusion": {t: {p: self.confusion[(t, p)] for p in self.labels} for t in self.labels},
            f"{a}_recall": round(self.rate(a, a), 4),
            f"{b}_recall": round(self.rate(b, b), 4),
            "per_category": {
                name: {"n": c["n"], "correct": c["correct"], "rate": round(c["correct"] / c["n"], 4)}
                for name, c in sorted(self.per_category.items())
            },
            "per_family": {
                name: {"n": c["n"], "correct": c["correct"], "rate": round(c["correct"] / c["n"], 4)}
                for name, c in sorted(self.per_family.items())
            },
            "latency_ms": self.latency_ms(),
            "misses": self.misses,
        }

    def render(self, heading: str) -> str:
        a, b = self.labels
        width = max(len(a), len(b), 9)
        corner = "true \\ got"
        lines = [
            heading,
            f"accuracy {self.accuracy:.1%} of {self.total}",
            "",
            f"{corner:<{width}}  {a:>{width}}  {b:>{width}}",
            *(
                f"{t:<{width}}  {self.confusion[(t, a)]:>{width}}  {self.confusion[(t, b)]:>{width}}"
                for t in self.labels
            ),
            "",
            "per category (label/category: correct of n):",
        ]
        for name, counts in sorted(self.per_category.items()):
            lines.append(
                f"  {name:<40} {counts['correct']:>4} of {counts['n']:<4} {counts['correct'] / counts['n']:.1%}"
            )
        if self.per_family:
            lines.append("per family (label/family: correct of n):")
            for name, counts in sorted(self.per_family.items()):
                rate = counts["correct"] / counts["n"]
                lines.append(f"  {name:<40} {counts['correct']:>4} of {counts['n']:<4} {rate:.1%}")
        latency = self.latency_ms()
        lines += [
            "",
            f"latency per prompt: p50 {latency['p50']} ms, p99 {latency['p99']} ms, mean {latency['mean']} ms",
        ]
        return "\n".join(lines)


async def evaluate_route(config: Config, examples: Sequence[Example]) -> Report:
    """The configured classifier's verdict against `simple`/`complex`, at the configured threshold."""
    classifier = build_classifier(config)
    await classifier.start()
    report = Report("route", ROUTE_LABELS)
    threshold = config.classifier.threshold
    try:
        for example in examples:
            started = time.perf_counter()
            verdict = classifier.score(Conversation.from_request(example.request, config.classifier.max_chars))
            seconds = time.perf_counter() - started
            predicted = "simple" if verdict.score < threshold else "complex"
            report.add(example, predicted, seconds, f"score {verdict.score:.3f}")
    finally:
        await classifier.close()
    return report


async def evaluate_guard(
    config: Config, examples: Sequence[Example], guard: Guard | None = None
) -> tuple[Report, list[str]]:
    """The LLM-free input rails over each example's client text: blocked is `attack`, passed is `benign`.

    Also returns the input flows NeMo's runtime would run after them (an LLM self-check, say), which this does
    not: they need a model answering."""
    import anyio

    from router.guard.rails import Guard
    from router.guard.texts import client_texts

    if guard is None:
        guard = await anyio.to_thread.run_sync(Guard.load, config)
    report = Report("guard", GUARD_LABELS)
    for example in examples:
        texts = [piece.text for piece in client_texts(example.request)]
        started = time.perf_counter()
        verdict = await guard.screen(texts)
        seconds = time.perf_counter() - started
        report.add(example, "attack" if verdict.blocked else "benign", seconds, verdict.rail or "")
    return report, list(guard.interpreted["input"])


def _finish(report: Report, heading: str, output: Path | None) -> int:
    print(report.render(heading))
    if output is not None:
        output.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {output}")
    return 0


def run_route_eval(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    examples = read_labelled(args.file, ROUTE_LABELS)
    report = asyncio.run(evaluate_route(config, examples))
    kind = config.classifier.kind
    heading = f"route: classifier '{kind}', threshold {config.classifier.threshold}, {args.file}"
    return _finish(report, heading, args.json)


def run_guard_eval(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    examples = read_labelled(args.file, GUARD_LABELS)
    report, not_run = asyncio.run(evaluate_guard(config, examples))
    heading = f"guard: the LLM-free input rails of {config.guardrails.path}, {args.file}"
    if not_run:
        heading += f"\n(not run here: NeMo input flows {', '.join(not_run)}, which need a model)"
    return _finish(report, heading, args.json)
