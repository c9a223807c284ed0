"""Every classifier: scores in [0, 1], the whole conversation read, truncation reported, accuracy held."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from router.decide.classify.base import ComplexityClassifier
from router.decide.classify.embedding import DEFAULT_WEIGHTS, EmbeddingClassifier, load_weights
from router.decide.classify.heuristic import HeuristicClassifier
from router.decide.classify.static import DEFAULT_HEAD, StaticClassifier, load_head
from router.decide.classify.training import DEFAULT_DATA, load_examples
from router.decide.conversation import Conversation
from router.wire.protocol import ChatCompletionRequest, ChatMessage

SIMPLE = [
    "What is the capital of France?",
    "hi!",
    "Translate 'good morning' into Spanish.",
    "How many legs does a spider have?",
]
COMPLEX = [
    "Prove that there are infinitely many primes. Explain each step of the proof rigorously.",
    "Write a Python function that parses ISO 8601 durations, with pytest tests covering the edge cases.",
    "Implement an LRU cache in Rust with unit tests, and explain the time complexity of each operation.",
    "Design a rate limiter for a distributed API gateway; compare token bucket and sliding window trade-offs.",
]


def conv(*turns: tuple[str, str], max_chars: int = 32_000) -> Conversation:
    request = ChatCompletionRequest(messages=[ChatMessage(role, text) for role, text in turns])  # type: ignore[arg-type]
    return Conversation.from_request(request, max_chars)


@pytest.fixture(scope="module")
def embedding() -> EmbeddingClassifier:
    classifier = EmbeddingClassifier(load_weights(DEFAULT_WEIGHTS, "test"))
    classifier.load()
    return classifier


@pytest.fixture(scope="module")
def static() -> StaticClassifier:
    classifier = StaticClassifier(load_head(DEFAULT_HEAD, "test"))
    classifier.load()
    return classifier


@pytest.fixture(params=["heuristic", "embedding", "static"])
def classifier(
    request: pytest.FixtureRequest, embedding: EmbeddingClassifier, static: StaticClassifier
) -> ComplexityClassifier:
    return {"heuristic": HeuristicClassifier(), "embedding": embedding, "static": static}[request.param]


def test_simple_below_and_complex_above_threshold(classifier: ComplexityClassifier) -> None:
    for text in SIMPLE:
        assert classifier.score(conv(("user", text))).score < 0.5, text
    for text in COMPLEX:
        assert classifier.score(conv(("user", text))).score >= 0.5, text


def test_reads_the_whole_conversation(classifier: ComplexityClassifier) -> None:
    follow_up = "ok, and the second part?"
    alone = classifier.score(conv(("user", follow_up))).score
    in_context = classifier.score(
        conv(
            ("system", "You are a rigorous mathematics tutor. Always give complete proofs."),
            (
                "user",
                "Prove by induction that the sum of the first n odd numbers is n^2, "
                "then derive a closed form for the sum of squares.",
            ),
            ("assistant", "Part one: base case n = 1 holds since 1 = 1^2. Inductive step: ..."),
            ("user", follow_up),
        )
    ).score
    assert in_context > alone


def test_truncation_is_reported(classifier: ComplexityClassifier) -> None:
    long_text = "Please explain this log line by line. " + "ERROR at module x line 12 " * 3000
    verdict = classifier.score(conv(("user", long_text), max_chars=4000))
    assert 0.0 <= verdict.score <= 1.0
    assert any(r.startswith("truncated: read 4000 of") for r in verdict.reasons)
    short = classifier.score(conv(("user", "hello")))
    assert not any(r.startswith("truncated") for r in short.reasons)


def test_scores_in_unit_interval_for_odd_input(classifier: ComplexityClassifier) -> None:
    for turns in (
        [("user", "")],
        [("user", "?" * 500)],
        [("assistant", "x")],
        [("user", "🙂" * 100)],
        [("user", "$" * 1000)],
    ):
        verdict = classifier.score(conv(*turns))
        assert 0.0 <= verdict.score <= 1.0


def heldout_accuracy(classifier: ComplexityClassifier) -> float:
    examples = [e for e in load_examples(DEFAULT_DATA) if e.heldout]
    predicted = np.array([classifier.score(e.conversation).score >= 0.5 for e in examples])
    return float(np.mean(predicted == np.array([e.label == 1 for e in examples])))


def test_heldout_accuracy(embedding: EmbeddingClassifier) -> None:
    # The shipped prompts: bench/RESULTS.md reports the same numbers.
    assert heldout_accuracy(HeuristicClassifier()) >= 0.9
    assert heldout_accuracy(embedding) >= 0.95


def test_embedding_scores_off_the_event_loop(embedding: EmbeddingClassifier) -> None:
    threads: list[int] = []

    class Recording(EmbeddingClassifier):
        def score(self, conversation: Conversation):  # type: ignore[no-untyped-def]
            threads.append(threading.get_ident())
            return embedding.score(conversation)

    recording = Recording(load_weights(DEFAULT_WEIGHTS, "test"))

    async def main() -> float:
        await recording.start()
        verdict = await recording.ascore(conv(("user", SIMPLE[0])))
        return verdict.score

    assert asyncio.run(main()) < 0.5
    assert threads and threads[0] != threading.get_ident()


def test_retraining_writes_weights_that_load(tmp_path: Path) -> None:
    from router.cli import main

    lines = DEFAULT_DATA.read_text().splitlines()
    subset = tmp_path / "subset.jsonl"
    subset.write_text("\n".join(lines[:60] + lines[-60:]) + "\n")
    output = tmp_path / "weights.json"
    assert main(["train-classifier", "--data", str(subset), "--output", str(output)]) == 0
    weights = load_weights(output, "test")
    assert weights.train_examples + weights.heldout_examples == 120
    assert 0.0 <= weights.heldout_accuracy <= 1.0
