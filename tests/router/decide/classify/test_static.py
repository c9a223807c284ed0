"""The static classifier: shipped weights load and route clear cases, earlier turns count, the default, held out."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from router.core.config import ClassifierConfig, ConfigError, load_config
from router.decide.classify.registry import build_classifier
from router.decide.classify.static import (
    DEFAULT_HEAD,
    DEFAULT_TABLE,
    Network,
    StaticClassifier,
    StaticFeaturizer,
    StaticTable,
    fingerprint,
    load_head,
    normalise,
)
from router.decide.classify.static_build import (
    DEFAULT_SOURCES,
    FOLDED,
    HELDOUT_FILES,
    HIDDEN,
    HeldoutFilter,
    fit_temperature,
    jsonl_files,
    read_labelled,
    run_static_training,
    training_examples,
    user_messages,
)
from router.decide.conversation import Conversation
from router.wire.protocol import ChatCompletionRequest, ChatMessage
from tests.helpers import REPO

SIMPLE = [
    "What's the boiling point of water at sea level in Celsius?",
    "Who painted the Mona Lisa?",
    "Convert 5 kilometres to miles.",
    "thanks, that's all I needed!",
    "What does the acronym NASA stand for?",
    "Give me a synonym for 'happy'.",
]
COMPLEX = [
    "Write a 2,000-word short story about a lighthouse keeper who starts receiving letters from the future.",
    "Plan a two-week vegetarian meal plan for a family of four on a $120 weekly budget, no nuts, "
    "with a shopping list per week and prep steps for Sunday batch cooking.",
    "Analyse the ethical and legal implications of using facial recognition in public schools, "
    "weighing safety against privacy, and recommend a policy.",
    "Implement a thread-safe bounded blocking queue in Java with unit tests and explain how it avoids deadlock.",
    "Prove that the square root of 3 is irrational, then generalise the argument to any prime.",
    "Design a multi-region active-active architecture for a payments ledger with exactly-once settlement.",
]
FOLLOW_UP = "now do the same in Go"
EARLIER_COMPLEX = (
    "Implement a concurrent web crawler in Python with a bounded worker pool, per-domain rate limits, "
    "robots.txt handling, retries with exponential backoff, and unit tests."
)


def conv(*turns: tuple[str, str]) -> Conversation:
    request = ChatCompletionRequest(messages=[ChatMessage(role, text) for role, text in turns])  # type: ignore[arg-type]
    return Conversation.from_request(request, 32_000)


@pytest.fixture(scope="module")
def static() -> StaticClassifier:
    classifier = StaticClassifier(load_head(DEFAULT_HEAD, "test"))
    classifier.load()
    return classifier


def test_shipped_head_is_for_the_shipped_table() -> None:
    head = load_head(DEFAULT_HEAD, "test")
    assert head.table_sha256 == hashlib.sha256(DEFAULT_TABLE.read_bytes()).hexdigest()
    assert DEFAULT_TABLE.stat().st_size < 8_000_000
    assert head.cv_folds > 1 and head.cv_accuracy >= 0.9


@pytest.mark.parametrize("text", SIMPLE)
def test_clear_simple_requests_score_simple(static: StaticClassifier, text: str) -> None:
    assert static.score(conv(("user", text))).score < 0.5


@pytest.mark.parametrize("text", COMPLEX)
def test_clear_complex_requests_score_complex(static: StaticClassifier, text: str) -> None:
    assert static.score(conv(("user", text))).score >= 0.5


def test_complexity_in_an_earlier_turn_carries_to_a_terse_follow_up(static: StaticClassifier) -> None:
    alone = static.score(conv(("user", FOLLOW_UP))).score
    in_context = static.score(
        conv(
            ("user", EARLIER_COMPLEX),
            ("assistant", "Here is the crawler:\n```python\nimport asyncio\n...\n```\nIt uses a semaphore per domain."),
            ("user", FOLLOW_UP),
        )
    ).score
    assert alone < 0.5 <= in_context


def test_a_simple_question_after_a_complex_turn_is_simple(static: StaticClassifier) -> None:
    verdict = static.score(
        conv(
            ("user", EARLIER_COMPLEX),
            ("assistant", "Here is the crawler:\n```python\nimport asyncio\n...\n```\nIt uses a semaphore per domain."),
            ("user", "thanks! quick one: what year was Python first released?"),
        )
    )
    assert verdict.score < 0.5


def test_scores_are_deterministic(static: StaticClassifier) -> None:
    fresh = StaticClassifier(load_head(DEFAULT_HEAD, "test"))
    for text in SIMPLE + COMPLEX:
        first = static.score(conv(("user", text)))
        assert static.score(conv(("user", text))) == first
        assert fresh.score(conv(("user", text))) == first


def test_it_is_the_default_and_the_shipped_configs_select_it() -> None:
    assert ClassifierConfig().kind == "static"
    for name in ("router.yaml", "gpu.yaml"):
        config = load_config(REPO / "config" / name, environ={})
        assert config.classifier.kind == "static", name
        assert isinstance(build_classifier(config), StaticClassifier), name


def test_shipped_weights_never_saw_a_heldout_prompt() -> None:
    head = load_head(DEFAULT_HEAD, "test")
    assert len(head.trained_on) > 3000 and head.examples > 3000
    for path in HELDOUT_FILES:
        heldout = {fingerprint(t) for item in read_labelled([path]) for t in user_messages(item)}
        assert len(heldout) > 250 and heldout.isdisjoint(head.trained_on), path.name


def test_the_folded_sets_are_in_the_shipped_weights() -> None:
    """The older held-out sets, measured once while unseen, are training data now; none is still held out."""
    head = load_head(DEFAULT_HEAD, "test")
    assert not set(FOLDED) & set(HELDOUT_FILES)
    for path in FOLDED:
        folded = {fingerprint(t) for item in read_labelled([path]) for t in user_messages(item)}
        assert len(folded & set(head.trained_on)) > 0.8 * len(folded), path.name


def test_training_data_drops_heldout_overlaps_including_earlier_turns() -> None:
    items = read_labelled(jsonl_files(DEFAULT_SOURCES))
    heldout = read_labelled([HELDOUT_FILES[0]])
    held = HeldoutFilter(heldout)
    kept = training_examples(items, held)
    seen = {normalise(t) for item in heldout for t in user_messages(item)}
    assert kept and all(normalise(t) not in seen for e in kept for t in e.user_messages)
    # A held-out prompt hidden in the first turn of a conversation, with new wording around it, is still dropped.
    planted = heldout[0].messages[0].text()
    trap = msgspec.json.decode(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": planted.upper() + "!!"},
                    {"role": "assistant", "content": "Sure."},
                    {"role": "user", "content": "and a brand-new follow-up nobody wrote before"},
                ],
                "label": "complex",
            }
        ),
        type=type(items[0]),
    )
    assert training_examples([trap], held) == []


@pytest.mark.slow
def test_the_builder_writes_a_head_that_loads(tmp_path: Path) -> None:
    lines = (DEFAULT_SOURCES[0]).read_text().splitlines()
    subset = tmp_path / "subset.jsonl"
    subset.write_text("\n".join(lines[:80] + lines[-80:]) + "\n")
    output = tmp_path / "head.json"
    args = argparse.Namespace(data=subset, output=output, skip_table=True, members=2, epochs=3)
    assert run_static_training(args) == 0
    head = load_head(output, "test")
    assert 100 < head.examples <= 160 and head.temperature > 0
    assert head.members == 2 and head.hidden == 2 * HIDDEN
    assert StaticClassifier(head).score(conv(("user", COMPLEX[0]))).score >= 0.0


def test_a_verdicts_parts_sum_to_its_logit(static: StaticClassifier) -> None:
    """The network is linear where its active units stay the same, so the parts a verdict names are exact."""
    static.load()
    network = Network.decode(load_head(DEFAULT_HEAD, "test").network)
    featurizer = StaticFeaturizer(StaticTable.load(DEFAULT_TABLE))
    for text in [*SIMPLE[:2], *COMPLEX[:2]]:
        row = featurizer.row(conv(("user", text)))
        logit, parts = network.explain(row)
        assert logit == pytest.approx(float(network.logits(row[None, :])[0]), abs=1e-3)
        active = (network.first @ ((row - network.mean) / network.scale) + network.first_bias) > 0
        constant = float((network.second * active) @ network.first_bias) + network.second_bias
        assert float(parts.sum()) + constant == pytest.approx(logit, abs=1e-3)
        assert f"(logit {logit:+.2f})" in static.score(conv(("user", text))).reasons[0]


def test_a_logistic_head_from_before_the_network_is_refused_with_what_to_do(tmp_path: Path) -> None:
    old = json.loads(DEFAULT_HEAD.read_text())
    del old["network"]
    old["weights"], old["bias"] = [0.0] * 10, 0.0
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="retrain with"):
        load_head(path, "test")
    # A network that is not an npz (a zip's magic, then nothing) is a configuration error too, not a traceback.
    broken = json.loads(DEFAULT_HEAD.read_text()) | {"network": base64.b64encode(b"PK\x03\x04" + b"\0" * 40).decode()}
    path.write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match="cannot load"):
        load_head(path, "test")


def test_temperature_softens_overconfident_logits_and_keeps_every_decision() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    # Logits of ±8 that are right only 80% of the time: honest scores need T well above 1.
    right = rng.random(2000) < 0.8
    logits = np.where(right == (y == 1), 8.0, -8.0)
    t = fit_temperature(logits, y)
    assert 4.0 < t < 8.0  # sigmoid(8 / T) = 0.8 at T ≈ 5.8
    assert np.array_equal(logits / t > 0, logits > 0)


def test_a_head_for_another_table_is_refused(tmp_path: Path) -> None:
    head = msgspec.structs.replace(load_head(DEFAULT_HEAD, "test"), table_sha256="0" * 64)
    with pytest.raises(ConfigError, match="not the table the head was trained on"):
        StaticClassifier(head).load()


CONFIG = """```ini
[server]
bind = 0.0.0.0
port = 9120
workers = 6
timeout_s = 45

[storage]
path = /var/lib/ledgerd
fsync = always
snapshot_every = 10000
compression = zstd

[auth]
mode = token
token_file = /etc/ledgerd/token
allow_anonymous_reads = true

[replication]
peers = ledger-b.internal:9120, ledger-c.internal:9120
quorum = 2
heartbeat_ms = 250

[metrics]
enabled = true
listen = 127.0.0.1:9121
```"""


def test_a_trivial_ask_about_pasted_material_is_simple_and_a_demanding_one_complex(static: StaticClassifier) -> None:
    trivial = static.score(conv(("user", f"what port does this listen on?\n\n{CONFIG}")))
    demanding = static.score(
        conv(("user", f"{CONFIG}\n\nReview this config for security and durability problems and explain each fix."))
    )
    assert trivial.score < 0.5 <= demanding.score
    assert any(reason.startswith("the ask's words") for reason in trivial.reasons)


@pytest.mark.parametrize(
    "text", ["Which is larger, 40^41 or 41^40? Justify.", "Is 2^89 - 1 prime? Explain how you'd know."]
)
def test_terse_prompts_whose_difficulty_has_no_length_score_complex(static: StaticClassifier, text: str) -> None:
    assert static.score(conv(("user", text))).score >= 0.5
