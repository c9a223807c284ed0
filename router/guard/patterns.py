"""Pattern rails: regular expressions for injection, jailbreak phrasing, secrets and PII.

Output groups are also matched *partially* (the `regex` module's `partial=True`): while a stream is
relayed, text that could still grow into a match is held back until the next chunk decides it.
"""

from __future__ import annotations

from dataclasses import dataclass

import regex

from router.core.config import ConfigError
from router.guard.data import PatternRule


@dataclass(frozen=True, slots=True)
class _Compiled:
    name: str
    pattern: regex.Pattern[str]
    validate: str | None


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
            try:
                compiled.append(_Compiled(rule.name, regex.compile(rule.regex), rule.validate))
            except regex.error as exc:
                key = f"custom_data.patterns.{group}[{i}].regex"
                raise ConfigError(source, key, f"invalid regular expression: {exc}") from exc
        self._rules = tuple(compiled)

    def __len__(self) -> int:
        return len(self._rules)

    def first_match(self, text: str) -> str | None:
        """The first rule that matches `text`. `concurrent=True`: the match releases the GIL, so a long scan in a
        worker thread never holds up the event loop's thread."""
        for rule in self._rules:
            for match in rule.pattern.finditer(text, concurrent=True):
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
