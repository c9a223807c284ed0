"""Round six of the rails: the n-gram rail overrules the MiniLM classifier on text it reads in full, and the data
written for the round."""

from __future__ import annotations

import numpy as np

from router.guard.classifier import AttackClassifier, ClassifierWeights, EmbeddedWindows
from router.guard.ngrams import BUCKETS, JOINT_CLASSIFIER, NgramModel, NgramRail
from router.guard.training import BENCH_DATA, DEFAULT_DATA, FOLDED, heldout_keys, load_examples

ROUND_SIX = (
    "rails6_attacks.jsonl",
    "rails6_multilingual.jsonl",
    "rails6_near_misses.jsonl",
    "rails6_second_batch.jsonl",
)
FOREIGN = "¿Cuánto tiempo hay que hervir los huevos para que queden duros?"
ENGLISH = "How long should I boil eggs so that they come out hard?"


def _flat(bias: float) -> NgramModel:
    """Every short text scores sigmoid(bias): no weights."""
    return NgramModel(np.zeros(BUCKETS, dtype=np.float32), bias, 0.9, {})


def test_the_ngram_rail_overrules_the_classifier_only_on_text_it_reads_in_full_and_scores_low() -> None:
    low, high = NgramRail(_flat(-3.0)), NgramRail(_flat(3.0))
    assert not low.judge(FOREIGN, True, 0.999)  # read, 0.05: not a request for harm to this model
    assert high.judge(FOREIGN, True, 0.999)  # read, 0.95: the classifier's block stands
    assert low.judge(ENGLISH, True, 0.999)  # English is the classifier's alone
    assert low.judge("Hola", True, 0.999)  # too short for the n-gram model to judge
    assert NgramRail(_flat(-3.0), agreement=0.0).judge(FOREIGN, True, 0.999)  # switched off


def test_both_models_leaning_to_attack_block_text_that_is_not_english() -> None:
    leaning = NgramRail(_flat(1.0))  # 0.73: under the rail's own threshold
    assert not leaning.blocks_texts([FOREIGN])
    assert leaning.judge(FOREIGN, False, JOINT_CLASSIFIER)
    assert not leaning.judge(FOREIGN, False, 0.8)  # the classifier does not lean far enough
    assert not NgramRail(_flat(0.5)).judge(FOREIGN, False, 0.95)  # 0.62: nor does the n-gram model
    assert not leaning.judge(ENGLISH, False, 0.95)  # English: the classifier's verdict alone


def test_a_long_text_is_judged_with_the_ngram_rail_only_when_no_part_of_it_is_english() -> None:
    foreign = "\n".join([FOREIGN] * 30)
    mixed = foreign + "\n" + ENGLISH + " Then tell me everything about the yolk and the shell."
    rail = NgramRail(_flat(-3.0))
    assert len(foreign) > 1000 and not rail.judge(foreign, True, 0.999)
    assert rail.judge(mixed, True, 0.999)


def test_the_classifier_says_which_texts_it_blocks() -> None:
    """Logistic head on the first dimension: a window's probability is sigmoid(x)."""
    classifier = AttackClassifier(ClassifierWeights(weights=[1.0] + [0.0] * 383, bias=0.0, threshold=0.99))
    rows = np.zeros((3, 384), dtype=np.float32)
    rows[:, 0] = [0.0, 7.6, 0.0]
    embedded = EmbeddedWindows(rows, [(0, 1), (1, 3)], [False, False, False])
    assert classifier.blocked(embedded) == [False, True]
    assert classifier.blocks_texts(embedded)
    full = EmbeddedWindows(rows, [(0, 1), (1, 3)], [False, True, False])  # the 0.9995 window a full one
    assert classifier.verdicts(full) == [(False, 0.5), (False, 0.5)]


def test_the_round_six_data_holds_no_bench_rails_request() -> None:
    """None of the benchmark's rails sets of its day (a later blind set may share a line with it by chance:
    training drops such a line)."""
    keys = heldout_keys([*FOLDED[:6], BENCH_DATA / "guard_heldout6.jsonl"])
    for name in ROUND_SIX:
        examples, dropped = load_examples(DEFAULT_DATA / name, keys)
        assert examples and dropped == 0, name
