"""Pattern rails: regular expressions for injection, jailbreak phrasing, secrets and PII.

Output groups are also matched *partially* (the `regex` module's `partial=True`): while a stream is
relayed, text that could still grow into a match is held back until the next chunk decides it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import regex

from router.core.config import ConfigError
from router.guard.data import PatternRule


@dataclass(frozen=True, slots=True)
class _Compiled:
    name: str
    pattern: regex.Pattern[str]
    validate: str | None
    anchor: regex.Pattern[str] | None = None
    """A `parts` rule's last part alone: the whole pattern is tried only around its matches."""
    reach: int = 0
    """How far from an anchor match the rest of a `parts` match can lie."""

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where to look for a match: all of `text`, or for a `parts` rule the stretches around its anchor's
        matches, merged (each character is read at most twice, however many anchors there are)."""
        if self.anchor is None:
            return [(0, len(text))]
        spans: list[tuple[int, int]] = []
        for match in self.anchor.finditer(text, concurrent=True):
            start, end = max(0, match.start() - self.reach), min(len(text), match.end() + self.reach)
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
        return spans


_SENTENCE_GAP = r"[^.!?\n。！？]"
"""What may sit between the parts of a `parts` rule: anything but the end of a sentence."""


PART_CHARS = 60
"""The longest text one alternative of a part is expected to match (a phrase of a few words)."""


def _parts(rule: PatternRule) -> list[str]:
    edge = r"\b" if rule.words else ""
    return [f"{edge}(?:{'|'.join(alternatives)}){edge}" for alternatives in rule.parts or []]


def rule_regex(rule: PatternRule) -> str:
    """The rule's regular expression: its `regex`, or its `parts` joined (in every order with `any_order`)."""
    if rule.parts is None:
        return rule.regex or ""
    parts = _parts(rule)
    gap = f"{_SENTENCE_GAP}{{0,{rule.gap}}}?"
    orders = itertools.permutations(parts) if rule.any_order else [parts]
    return "(?i)(?:" + "|".join(gap.join(order) for order in orders) + ")"


def luhn_ok(digits: str) -> bool:
    numbers = [int(c) for c in digits if c.isdigit()]
    total = 0
    for i, n in enumerate(reversed(numbers)):
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return len(numbers) >= 13 and total % 10 == 0


class PatternSet:
    """The compiled rules of one group; `first_match` names the rule that matched, if any."""

    def __init__(self, group: str, rules: list[PatternRule], source: str) -> None:
        self.group = group
        compiled = []
        for i, rule in enumerate(rules):
            key = f"custom_data.patterns.{group}[{i}]"
            if (rule.regex is None) == (rule.parts is None) or (rule.parts is not None and not all(rule.parts)):
                raise ConfigError(source, key, "give either `regex` or `parts` (non-empty lists of alternatives)")
            try:
                pattern = regex.compile(rule_regex(rule))
                if rule.parts is None:
                    compiled.append(_Compiled(rule.name, pattern, rule.validate))
                else:  # scanning for every order of every part is slow: look only near the last part's matches
                    anchor = regex.compile("(?i)" + _parts(rule)[-1])
                    reach = (len(rule.parts) - 1) * (rule.gap + PART_CHARS)
                    compiled.append(_Compiled(rule.name, pattern, rule.validate, anchor, reach))
            except regex.error as exc:
                raise ConfigError(source, f"{key}.{'regex' if rule.parts is None else 'parts'}",
                                  f"invalid regular expression: {exc}") from exc  # fmt: skip
        self._rules = tuple(compiled)

    def __len__(self) -> int:
        return len(self._rules)

    def first_match(self, text: str) -> str | None:
        """The first rule that matches `text`. `concurrent=True`: the match releases the GIL, so a long scan in a
        worker thread never holds up the event loop's thread."""
        for rule in self._rules:
            for start, end in rule.spans(text):
                for match in rule.pattern.finditer(text, start, end, concurrent=True):
                    if rule.validate != "luhn" or luhn_ok(match.group()):
                        return rule.name
        return None

    def hold_from(self, text: str) -> int:
        """Where text that could still become a match begins (len(text) when none could)."""
        hold = len(text)
        window = max(0, len(text) - 4096)  # a match still open at the end started in the last few KB
        for rule in self._rules:
            for match in rule.pattern.finditer(text, window, partial=True, concurrent=True):
                if match.partial:
                    hold = min(hold, match.start())
        return hold
