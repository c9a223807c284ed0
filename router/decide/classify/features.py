"""Surface features of a conversation that predict how hard it is: length, code, math, reasoning cues...

Each feature is squashed into [0, 1] so that a linear model over them (the heuristic's hand-set
weights, or the embedding classifier's learned ones) stays well-scaled.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from router.decide.conversation import Conversation

FEATURE_NAMES: tuple[str, ...] = (
    "length",
    "code",
    "math",
    "reasoning",
    "multi_step",
    "questions",
    "constraints",
    "depth",
    "system_prompt",
    "simple_cues",
)

_CODE = re.compile(
    r"```|^\s{4,}\S|\b(?:def|class|import|return|fn|func|public|void|const|let|var|SELECT|#include)\b|[{};]\s*$",
    re.MULTILINE,
)
_MATH = re.compile(
    r"\\(?:frac|sum|int|sqrt|prod|lim|forall|exists|mathbb|begin)|[∑∫√∀∃≤≥≠∞π]|\$[^$\n]+\$"
    r"|\b(?:prove|proof|theorem|lemma|integral|derivative|eigen\w*|matrix|polynomial|prime|modulo|probability"
    r"|equation|inequality|induction|convergen\w*|differential|vector space|asymptotic)\b"
    r"|\b[a-z]\s*[\^=<>]\s*\w",
    re.IGNORECASE,
)
_REASONING = re.compile(
    r"\b(?:why|explain|analy[sz]e|analysis|compare|contrast|trade-?offs?|evaluate|justify|derive|design|architect\w*"
    r"|optimi[sz]e|implement|debug|refactor|critique|assess|reason|implications?|strateg\w*|pros and cons"
    r"|in depth|detailed|comprehensive|rigorous\w*|complexity|scalab\w*|algorithm\w*|diagnos\w*|démontrer"
    r"|beweis\w*|analiza\w*|expliquer|erklär\w*)\b",
    re.IGNORECASE,
)
_MULTI_STEP = re.compile(
    r"\bstep[- ]by[- ]step\b|\b(?:first|second|third|then|next|finally|afterwards|subsequently|part \w)\b"
    r"|^\s*(?:\d+[.)]|[-*•])\s+",
    re.IGNORECASE | re.MULTILINE,
)
_CONSTRAINTS = re.compile(
    r"\b(?:must|should|at least|at most|no more than|exactly|without|ensure|make sure|only use|do not|don't"
    r"|within|limit\w*|require\w*|constraint\w*|include|handle|edge cases?|tests?|words?)\b",
    re.IGNORECASE,
)
_SIMPLE = re.compile(
    r"^\s*(?:what(?:'s| is| are| was)|who(?:'s| is| was)|when (?:is|was|did)|where (?:is|was)"
    r"|how (?:many|much|old|tall|far)|define|translate|spell|convert|hi\b|hello|hey|thanks|thank you"
    r"|quelle? est|was ist|qué es|cuál es)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Features:
    values: tuple[float, ...]
    counts: dict[str, int]
    """Raw counts behind each feature, for human-readable reasons."""


def _sat(count: float, scale: float) -> float:
    """Saturating map of a count onto [0, 1): `scale` is the count that gives ~0.63."""
    return 1.0 - math.exp(-count / scale)


def extract(conversation: Conversation) -> Features:
    text = conversation.text
    counts = {
        "length": conversation.prompt_tokens,
        "code": len(_CODE.findall(text)),
        "math": len(_MATH.findall(text)),
        "reasoning": len(_REASONING.findall(text)),
        "multi_step": len(_MULTI_STEP.findall(text)),
        "questions": text.count("?"),
        "constraints": len(_CONSTRAINTS.findall(text)),
        "depth": conversation.turns,
        "system_prompt": conversation.system_chars,
        "simple_cues": 1 if _SIMPLE.match(conversation.last_user) else 0,
    }
    values = (
        min(1.0, math.log1p(counts["length"] / 16) / math.log1p(2000 / 16)),
        _sat(counts["code"], 3),
        _sat(counts["math"], 2),
        _sat(counts["reasoning"], 2),
        _sat(counts["multi_step"], 3),
        _sat(max(0, counts["questions"] - 1), 2),
        _sat(counts["constraints"], 3),
        _sat(max(0, counts["depth"] - 1), 4),
        _sat(counts["system_prompt"], 400),
        float(counts["simple_cues"]),
    )
    return Features(values, counts)
