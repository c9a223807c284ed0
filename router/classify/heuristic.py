"""The heuristic classifier: a hand-weighted logistic model over surface features. Runs inline (~tens of µs)."""

from __future__ import annotations

import math
from typing import ClassVar

from router.classify.base import ComplexityClassifier, Verdict
from router.classify.features import FEATURE_NAMES, extract
from router.conversation import Conversation

# Weights in logit space. Set by hand, then checked against the shipped labelled prompts
# (tests/router/classify/test_heuristic.py keeps the accuracy from regressing).
WEIGHTS: dict[str, float] = {
    "length": 3.0,
    "code": 2.2,
    "math": 2.6,
    "reasoning": 2.4,
    "multi_step": 1.6,
    "questions": 1.0,
    "constraints": 1.4,
    "depth": 0.6,
    "system_prompt": 0.3,
    "simple_cues": -1.6,
}
BIAS = -3.2


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
