"""Pattern rails: regular expressions for injection, jailbreak phrasing, disallowed requests, secrets and PII.

Output groups are also matched *partially* (the `regex` module's `partial=True`): while a stream is
relayed, text that could still grow into a match is held back until the next chunk decides it.

A `parts` rule (words of a phrase in one sentence) is skipped outright when the text lacks every literal of one of
its parts (`required_literal`: a substring test, far cheaper than a regex over 16 KiB), and otherwise tried only
around matches of its last part; a match whose sentence holds one of the rule's `unless` words does not count (with
`words`, an `unless` word counts only where a word starts).
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
    unless: regex.Pattern[str] | None = None
    """A match whose sentence this finds does not count (`PatternRule.unless`)."""
    needles: tuple[tuple[str, ...], ...] = ()
    """For parts whose every alternative has a literal that any match must contain (`required_literal`): those
    literals, case-folded, fewest first. A text that lacks all the literals of one of them cannot match: the rule
    is skipped without running a regex over it (most texts lack most rules' words)."""

    def may_match(self, folded: str) -> bool:
        """False when `folded` (the text, case-folded) lacks every literal of one of the rule's parts."""
        return all(any(needle in folded for needle in part) for part in self.needles)

    def counts(self, text: str, match: regex.Match[str]) -> bool:
        if self.validate == "luhn" and not luhn_ok(match.group()):
            return False
        if self.unless is None:
            return True
        start = max(0, match.start() - SENTENCE_CHARS)
        before = [m.end() for m in _SENTENCE_END.finditer(text, start, match.start())]
        after = _SENTENCE_END.search(text, match.end(), match.end() + SENTENCE_CHARS)
        end = after.start() if after is not None else min(len(text), match.end() + SENTENCE_CHARS)
        return self.unless.search(text, before[-1] if before else start, end, concurrent=True) is None

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
_SENTENCE_END = regex.compile(r"[.!?\n。！？]")
SENTENCE_CHARS = 300
"""How far around a match its sentence is looked for (`unless`)."""


PART_CHARS = 60
"""The longest text one alternative of a part is expected to match (a phrase of a few words)."""


def required_literal(alternative: str) -> str | None:
    """The longest run of plain characters that every match of `alternative` (one alternative of a part) must
    contain, case-folded; None when there is none of two characters or more, or the alternative is itself an
    alternation at its top level. Groups, classes, escapes like `\\w`, and a character made optional by `?`,
    `*` or `{0,` end a run."""
    runs: list[str] = []
    run = ""
    i = 0
    while i < len(alternative):
        char = alternative[i]
        literal: str | None = None
        if char == "\\" and i + 1 < len(alternative):
            following = alternative[i + 1]
            if following in "pPN" and alternative[i + 2 : i + 3] == "{":
                i = alternative.index("}", i) + 1
            elif following.isalnum():
                i += 2
            else:
                literal, i = following, i + 2
        elif char in "([":
            i = _skip_group(alternative, i)
        elif char == "|":
            return None
        elif char == "{":
            i = alternative.find("}", i) + 1 or len(alternative)
        elif char in ".^$?*+":
            i += 1
        else:
            literal, i = char, i + 1
        optional = alternative[i : i + 1] in ("?", "*") or alternative[i : i + 2] == "{0"
        if literal is not None and not optional:
            run += literal
            if alternative[i : i + 1] != "+":
                continue
        runs.append(run)
        run = ""
    runs.append(run)
    best = max(runs, key=len).casefold()
    return best if len(best) >= 2 else None


def _skip_group(text: str, start: int) -> int:
    """The index after the group `(...)` or class `[...]` that starts at `start`."""
    depth, i, in_class = 0, start, False
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]" or i == start + 1
        elif char == "[":
            in_class = True
            if text[start] == "[" and i == start:
                depth += 1
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        if text[start] == "[" and not in_class:
            return i + 1
        i += 1
    return len(text)


def _needles(rule: PatternRule) -> tuple[tuple[str, ...], ...]:
    parts = []
    for alternatives in rule.parts or []:
        literals = [required_literal(a) for a in alternatives]
        if all(literals):
            parts.append(tuple(dict.fromkeys(lit for lit in literals if lit)))
    return tuple(sorted(parts, key=len))


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
            field = "regex" if rule.parts is None else "parts"
            try:
                pattern = regex.compile(rule_regex(rule))
                field = "unless"
                alternatives = rule.unless_alternatives()
                if rule.words:  # a word of `unless` starts a word: "own" is not in "down", nor "ate" in "create"
                    alternatives = [f"(?<!\\w)(?:{a})" for a in alternatives]
                unless = regex.compile("(?i)(?:" + "|".join(alternatives) + ")") if alternatives else None
                field = "regex" if rule.parts is None else "parts"
                if rule.parts is None:
                    compiled.append(_Compiled(rule.name, pattern, rule.validate, unless=unless))
                else:  # scanning for every order of every part is slow: look only near the last part's matches
                    anchor = regex.compile("(?i)" + _parts(rule)[-1])
                    reach = (len(rule.parts) - 1) * (rule.gap + PART_CHARS)
                    compiled.append(_Compiled(rule.name, pattern, rule.validate, anchor, reach, unless, _needles(rule)))
            except regex.error as exc:
                raise ConfigError(source, f"{key}.{field}", f"invalid regular expression: {exc}") from exc
        self._rules = tuple(compiled)

    def __len__(self) -> int:
        return len(self._rules)

    def first_match(self, text: str) -> str | None:
        """The first rule that matches `text`. `concurrent=True`: the match releases the GIL, so a long scan in a
        worker thread never holds up the event loop's thread."""
        folded: str | None = None
        for rule in self._rules:
            if rule.needles:
                folded = text.casefold() if folded is None else folded
                if not rule.may_match(folded):
                    continue
            for start, end in rule.spans(text):
                for match in rule.pattern.finditer(text, start, end, concurrent=True):
                    if rule.counts(text, match):
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
