"""The character n-gram rail: a linear model over hashed 1-5 character n-grams, blind to language and script.

The MiniLM classifier (router/guard/classifier.py) reads English; a harmful request in Tamil, Hungarian or
Japanese is noise to it, and the pattern lexicons only know the words someone wrote down. Character n-grams need
no tokenizer and no vocabulary: "бомб", "爆弾", "வெடிகுண்டு" and "pommi" are features like any other, and a
model trained on requests in many languages and scripts (router/data/guard, `tiered-router train-guard --model
ngram`) learns which ones go with asking for harm and which with innocent talk about the same topics.

A text is casefolded, every run of characters that are neither letters nor digits becomes one space, and each
n-gram (n = 1..5) is hashed into one of `BUCKETS` features (a polynomial hash over code points, vectorised in
numpy: a 16 KB text takes about a millisecond). A feature's value is log(1 + count), the row scaled to unit
length; the score is a logistic over the dot product with the weights. A short text is read whole; a long one as
its short paragraphs and its two ends (`segments`), so a request after padding is scored on its own, as the
classifier's windows do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import regex

from router.core.config import ConfigError
from router.guard.classifier import spaced
from router.guard.normalise import reads_as_english, reads_as_short_english

SHIPPED_NGRAMS = Path(__file__).resolve().parents[1] / "data" / "guard_ngrams.npz"
BUCKETS = 1 << 18
ORDERS = (1, 2, 3, 4, 5)
WHOLE_CHARS = 1000
"""A text up to this long is scored whole; a longer one by its `segments`."""
EDGE_CHARS = 300
PARAGRAPH_CHARS = (20, 600)
MAX_PARAGRAPHS = 8
MIN_LETTERS = 10
MIN_WORDS = 4
AGREEMENT = 0.5
"""On text this rail reads in full, the MiniLM classifier's block stands only if this model scores it this or more."""
JOINT_CLASSIFIER = 0.9
JOINT_NGRAMS = 0.7
"""On such text, also a block: the classifier at `JOINT_CLASSIFIER` or more and this model at `JOINT_NGRAMS` or more.
On the training data's validation split (short texts read in full: 319 attacks, 443 benign, never trained on), the
n-gram rail with the classifier's vetoed blocks caught 180 attacks for 11 false blocks; with this joint rule, 206
for 15 (bench/RESULTS.md, round six)."""
_LETTER = regex.compile(r"\p{L}")
_UNSPACED = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]")
_NOT_WORD = regex.compile(r"[^\p{L}\p{M}\p{N}]+")
_PARAGRAPH = regex.compile(r"\n\s*")
_MULTIPLIER = np.uint64(1_000_003)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_SHIFT = np.uint64(31)


def ngram_text(text: str) -> str:
    """What the n-grams are read from: casefolded, words separated by single spaces, a space at each end."""
    return f" {_NOT_WORD.sub(' ', text.casefold()).strip()} "


def features(text: str, buckets: int = BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """The text's hashed n-gram features: (bucket indices, values), one row of unit length."""
    clean = ngram_text(text)
    codes = np.frombuffer(clean.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(clean.strip()) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    hashed: list[np.ndarray] = []
    rolling = np.zeros(len(codes), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for n in range(1, max(ORDERS) + 1):
            if n > len(codes):
                break
            # rolling[i] holds the hash of codes[i : i + n]
            rolling = rolling[: len(codes) - n + 1] * _MULTIPLIER + codes[n - 1 :]
            if n in ORDERS:
                mixed = (rolling + np.uint64(n)) * _MIX
                hashed.append((mixed ^ (mixed >> _SHIFT)) % np.uint64(buckets))
    indices, counts = np.unique(np.concatenate(hashed).astype(np.int64), return_counts=True)
    values = np.log1p(counts.astype(np.float32))
    values /= float(np.sqrt((values * values).sum()))
    return indices, values


def read_by_ngrams(piece: str) -> bool:
    """Whether the rail reads `piece`: a sentence or more (`MIN_WORDS` words, or `MIN_LETTERS` letters of a script
    written without spaces) that does not read as English. English is the MiniLM classifier's to judge, and a
    function name or a JSON field ("get drug info") is too short to say anything."""
    letters = _LETTER.findall(piece)
    if len(letters) < MIN_LETTERS:
        return False
    unspaced = sum(1 for letter in letters if _UNSPACED.match(letter))
    if len(piece.split()) < MIN_WORDS and unspaced * 2 < len(letters):
        return False
    return not english(piece)


def english(piece: str) -> bool:
    """Whether `piece` is English to this rail: it reads as English, or is a short plain-ASCII text with common
    English words (`reads_as_short_english`), which a rail that learnt from few English prompts had read as a
    request for harm ("Can you microwave aluminum foil?", 0.966)."""
    return reads_as_english(piece) or reads_as_short_english(piece)


def segments(text: str) -> list[str]:
    """What of a text is scored: all of it when short; else its two ends and its short paragraphs (at most
    `MAX_PARAGRAPHS`, evenly spaced), each scored alone."""
    text = text.strip()
    if len(text) <= WHOLE_CHARS:
        return [text] if text else []
    low, high = PARAGRAPH_CHARS
    found = spaced([p.strip() for p in _PARAGRAPH.split(text) if low <= len(p.strip()) <= high], MAX_PARAGRAPHS)
    head = text[:EDGE_CHARS].rsplit(" ", 1)[0] if " " in text[:EDGE_CHARS] else text[:EDGE_CHARS]
    tail = text[-EDGE_CHARS:].split(" ", 1)[-1]
    return list(dict.fromkeys([head, *found, tail]))


@dataclass(frozen=True)
class NgramModel:
    weights: np.ndarray
    """One weight per bucket (float32 in memory, float16 on disk)."""
    bias: float
    threshold: float
    """Block at or above this probability (chosen on the validation split; config may override it)."""
    info: dict[str, float | int | str]

    def logit(self, text: str) -> float:
        indices, values = features(text, len(self.weights))
        return float(values @ self.weights[indices]) + self.bias if len(indices) else self.bias

    def probability(self, text: str) -> float:
        """The attack probability of `text`'s most attack-like segment that the rail reads (`read_by_ngrams`).
        The most of k segments is read against odds k times longer: a long benign text has more chances to hold
        one high-scoring paragraph, and that alone must not make it look like a request for harm."""
        pieces = segments(text)
        return self._most_attack_like(pieces, [piece for piece in pieces if read_by_ngrams(piece)])

    def probability_read_in_full(self, text: str) -> float | None:
        """`probability(text)` when the rail reads every segment of `text` (none of it English, nor too short to
        judge); None when it does not."""
        pieces = segments(text)
        read = [piece for piece in pieces if read_by_ngrams(piece)]
        if not pieces or len(read) < len(pieces):
            return None
        return self._most_attack_like(pieces, read)

    def _most_attack_like(self, pieces: list[str], read: list[str]) -> float:
        logits = [self.logit(piece) for piece in read]
        if not logits:
            return 0.0
        return float(1.0 / (1.0 + np.exp(-(max(logits) - np.log(len(pieces))))))

    def score(self, texts: Sequence[str]) -> float:
        return max((self.probability(text) for text in texts if text.strip()), default=0.0)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"bias": self.bias, "threshold": self.threshold, **self.info}
        with path.open("wb") as out:
            np.savez_compressed(out, weights=self.weights.astype(np.float16), meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: Path, source: str = "") -> NgramModel:
        try:
            with np.load(path, allow_pickle=False) as stored:
                weights = stored["weights"].astype(np.float32)
                meta = json.loads(str(stored["meta"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(source or str(path), "custom_data.ngrams.weights", f"cannot read {path}: {exc}") from exc
        bias, threshold = float(meta.pop("bias")), float(meta.pop("threshold"))
        return cls(weights, bias, threshold, meta)


class NgramRail:
    """The rail: an `NgramModel`, the threshold it blocks at, and how it judges with the MiniLM classifier on text
    that is not English (`judge`)."""

    def __init__(self, model: NgramModel, threshold: float | None = None, agreement: float = AGREEMENT) -> None:
        self.model = model
        self.threshold = model.threshold if threshold is None else threshold
        self.agreement = agreement

    def blocks_texts(self, texts: Sequence[str]) -> bool:
        return self.model.score(texts) >= self.threshold

    def judge(self, text: str, classifier_blocks: bool, classifier_probability: float) -> bool:
        """The classifier's verdict on `text`, judged with this model where it reads all of the text (none of it
        English). MiniLM's vocabulary is English: a short question in Arabic, Czech or Ukrainian is mostly unknown
        word pieces to it, and its head read such questions about food poisoning, IKEA furniture or a child who
        swallowed detergent at 0.99 or more (bench/RESULTS.md, round six). So there its block stands only if this
        model scores the text `agreement` or more; and where both lean to attack without either being sure
        (classifier `JOINT_CLASSIFIER`, this model `JOINT_NGRAMS`), two models that read the text differently
        agreeing is taken as a block. `agreement` 0 switches both off: the classifier's verdict stands alone."""
        if not classifier_blocks and classifier_probability < JOINT_CLASSIFIER:
            return False  # nothing to overrule or join: the common case costs no n-gram scoring
        probability = self.model.probability_read_in_full(text) if self.agreement > 0 else None
        if probability is None:
            return classifier_blocks
        if classifier_blocks and probability >= self.agreement:
            return True
        return classifier_probability >= JOINT_CLASSIFIER and probability >= JOINT_NGRAMS
