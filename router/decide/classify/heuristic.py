"""The heuristic classifier: a hand-weighted logistic model over surface features. Runs inline (~tens of µs)."""

from __future__ import annotations

import math
from typing import ClassVar

from router.decide.classify.base import ComplexityClassifier, Verdict
from router.decide.classify.features import FEATURE_NAMES, extract
from router.decide.conversation import Conversation

# Weights in logit space: fitted by `router.decide.classify.training.fit_logistic` (L2 = 1) on the training split
# of the shipped labelled prompts, then rounded; tests/router/decide/classify/test_classifiers.py checks the held-out
# accuracy so a change to the features or weights cannot silently regress it.
WEIGHTS: dict[str, float] = {
    "length": 3.2,
    "code": 1.0,
    "math": 3.6,
    "reasoning": 5.2,
    "multi_step": 0.7,
    "questions": -1.4,
    "constraints": 2.8,
    "depth": -1.2,
    "system_prompt": -0.2,
    "simple_cues": -1.9,
}
BIAS = -1.6


class HeuristicClassifier(ComplexityClassifier):
    name: ClassVar[str] = "heuristic"

    def score(self, conversation: Conversation) -> Verdict:
        features = extract(conversation)
        contributions = [
            (WEIGHTS[name] * value, name) for name, value in zip(FEATURE_NAMES, features.values, strict=True)
        ]
        logit = BIAS + sum(c for c, _ in contributions)
        score = 1.0 / (1.0 + math.exp(-logit))
        reasons = [
            f"{name}: {features.counts[name]} ({c:+.2f})"
            for c, name in sorted(contributions, key=lambda item: -abs(item[0]))
            if abs(c) >= 0.05
        ]
        if conversation.truncation:
            reasons.append(conversation.truncation)
        return Verdict(round(score, 4), reasons)
