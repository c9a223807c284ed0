"""The classifier interface: a conversation in, a complexity verdict out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple

from router.decide.conversation import Conversation


class Verdict(NamedTuple):
    score: float
    """Complexity in [0, 1]: 0 is trivially simple, 1 clearly needs the large model."""
    reasons: list[str]


class ComplexityClassifier(ABC):
    """Scores how hard a conversation is. `score` is pure and synchronous; `ascore` is what the app awaits."""

    name: ClassVar[str]

    @abstractmethod
    def score(self, conversation: Conversation) -> Verdict: ...

    async def ascore(self, conversation: Conversation) -> Verdict:
        """Cheap classifiers answer inline; heavy ones override this to run off the event loop."""
        return self.score(conversation)

    async def start(self) -> None:
        """Load whatever the classifier needs; called once in the app's lifespan."""

    async def close(self) -> None:
        """Release what `start` acquired."""
