"""The classifier interface and the name → implementation registry chosen in config."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, NamedTuple

from router.config import ClassifierConfig, Config
from router.conversation import Conversation


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


ClassifierFactory = Callable[[ClassifierConfig, Config], ComplexityClassifier]


def build_classifier(config: Config) -> ComplexityClassifier:
    # Imported here so a heuristic-only router never imports torch.
    from router.classify.embedding import EmbeddingClassifier
    from router.classify.heuristic import HeuristicClassifier

    registry: dict[str, ClassifierFactory] = {
        HeuristicClassifier.name: lambda c, _cfg: HeuristicClassifier(),
        EmbeddingClassifier.name: lambda c, cfg: EmbeddingClassifier.from_config(c, cfg),
    }
    return registry[config.classifier.kind](config.classifier, config)
