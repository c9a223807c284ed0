"""The classifier interface: a conversation in, a complexity verdict out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple

import anyio

from router.decide.conversation import Conversation

INLINE_CHARS = 4000
"""Conversations up to this long are scored on the event loop; longer ones in a thread."""


class Verdict(NamedTuple):
    score: float
    """Complexity in [0, 1]: 0 is trivially simple, 1 clearly needs the large model."""
    reasons: list[str]


class ComplexityClassifier(ABC):
    """Scores how hard a conversation is. `score` is pure and synchronous; `ascore` is what the app awaits."""

    name: ClassVar[str]
    _long: anyio.CapacityLimiter | None = None
    """Made on first use, on the event loop: long conversations are scored in threads, one at a time."""

    @abstractmethod
    def score(self, conversation: Conversation) -> Verdict: ...

    async def ascore(self, conversation: Conversation) -> Verdict:
        """A short conversation is scored inline (well under a millisecond); a long one in a worker thread, so a
        maximum-size request never holds up the event loop. Heavy classifiers override this."""
        if len(conversation.text) <= INLINE_CHARS:
            return self.score(conversation)
        if self._long is None:
            self._long = anyio.CapacityLimiter(1)  # one at a time: the regexes hold the GIL while they run
        return await anyio.to_thread.run_sync(self.score, conversation, limiter=self._long)

    async def start(self) -> None:
        """Load whatever the classifier needs; called once in the app's lifespan."""

    async def close(self) -> None:
        """Release what `start` acquired."""
