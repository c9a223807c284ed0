"""Typed data for the LLM-free rails, read from the NeMo config's `custom_data` and validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from router.core.config import ConfigError, Strict, Unit, decode_struct

GROUPS = ("injection", "jailbreak", "evasion", "disallowed", "secrets", "pii")
"""Pattern groups the rails in rails.co refer to; input rails use the first four, output rails the rest."""


class PatternRule(Strict, frozen=True):
    name: str
    regex: str | None = None
    """One regular expression; or, instead, `parts`."""
    validate: Literal["luhn"] | None = None
    """An extra check on a match (`luhn`: a credit card number's check digit), cutting false positives."""
    parts: list[list[str]] | None = None
    """Phrases made of words said in any order (several languages' "ignore ... previous ... instructions"): each
    part is a list of alternatives (regular expressions); a match is every part in one sentence, each within
    `gap` characters of the one before, in this order, or in any order with `any_order`."""
    any_order: bool = False
    gap: Annotated[int, Meta(ge=0, le=200)] = 60
    words: bool = True
    """A part is whole words (`\\b` on both sides); off for scripts written without spaces (Chinese, Japanese)."""
    unless: list[str | list[str]] | None = None
    """Alternatives (regular expressions, case-insensitive) that cancel a match when one is in the sentence that
    holds it: a question about defence, first aid or history ("how do I stop someone hacking my account"). An item
    may be a list of them (a YAML alias of a list shared by several rules)."""

    def unless_alternatives(self) -> list[str]:
        return [a for item in self.unless or [] for a in ([item] if isinstance(item, str) else item)]


class PatternGroups(Strict, frozen=True):
    injection: list[PatternRule] = msgspec.field(default_factory=list)
    jailbreak: list[PatternRule] = msgspec.field(default_factory=list)
    evasion: list[PatternRule] = msgspec.field(default_factory=list)
    """Asking for the answer in an encoding so that it gets past the output rails ("respond only in base64")."""
    disallowed: list[PatternRule] = msgspec.field(default_factory=list)
    """Plainly disallowed requests (make a bomb, write ransomware) in languages the encoder reads poorly."""
    secrets: list[PatternRule] = msgspec.field(default_factory=list)
    pii: list[PatternRule] = msgspec.field(default_factory=list)

    def group(self, name: str) -> list[PatternRule]:
        rules: list[PatternRule] = getattr(self, name)
        return rules


class SimilaritySettings(Strict, frozen=True):
    disallowed: str
    allowed: str | None = None
    threshold: Unit = 0.5
    margin: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0


class ClassifierSettings(Strict, frozen=True):
    weights: str | bool = "shipped"
    """`shipped` (router/data/guard_classifier.json), `off` (YAML reads it as false; the `classifier` check then
    passes everything), or a weights file from `tiered-router train-guard`, relative to the guardrails directory."""
    threshold: Unit | None = None
    """Block at or above this attack probability; unset: the threshold stored with the weights."""


class NgramSettings(Strict, frozen=True):
    weights: str | bool = "shipped"
    """`shipped` (router/data/guard_ngrams.npz), `off` (the `ngrams` check then passes everything), or a file from
    `tiered-router train-guard --model ngram`, relative to the guardrails directory."""
    threshold: Unit | None = None
    """Block at or above this attack probability; unset: the threshold stored with the weights."""
    agreement: Unit = 0.5
    """On a text that this model reads in full (none of it English), the MiniLM classifier's block stands only if
    this model scores the text at least this; 0 leaves the classifier's verdict alone (router/guard/ngrams.py
    `NgramRail.judge`)."""


class GuardData(Strict, frozen=True):
    patterns: PatternGroups = PatternGroups()
    similarity: SimilaritySettings | None = None
    classifier: ClassifierSettings | None = None
    ngrams: NgramSettings | None = None
    """The character n-gram rail (router/guard/ngrams.py): text that does not read as English."""


def load_guard_data(custom_data: dict[str, Any], directory: Path) -> tuple[GuardData, list[str], list[str]]:
    """Decode `custom_data` and read the example files; returns (data, disallowed lines, allowed lines)."""
    source = str(directory)
    known = {k: v for k, v in custom_data.items() if k in GuardData.__struct_fields__}
    data = decode_struct(known, GuardData, source, prefix="custom_data")
    disallowed: list[str] = []
    allowed: list[str] = []
    if data.similarity is not None:
        disallowed = _read_lines(directory, data.similarity.disallowed, "custom_data.similarity.disallowed")
        if not disallowed:
            raise ConfigError(source, "custom_data.similarity.disallowed", "the file has no examples")
        if data.similarity.allowed:
            allowed = _read_lines(directory, data.similarity.allowed, "custom_data.similarity.allowed")
    return data, disallowed, allowed


def _read_lines(directory: Path, name: str, key: str) -> list[str]:
    path = directory / name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(directory), key, f"cannot read {path}: {exc.strerror or exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
