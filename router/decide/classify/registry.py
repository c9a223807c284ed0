"""The name → classifier registry that `classifier.kind` chooses from."""

from __future__ import annotations

from collections.abc import Callable

from router.core.config import ClassifierConfig, Config
from router.decide.classify.base import ComplexityClassifier

ClassifierFactory = Callable[[ClassifierConfig, Config], ComplexityClassifier]


def build_classifier(config: Config) -> ComplexityClassifier:
    # Imported here so a heuristic-only router never imports torch.
    from router.decide.classify.embedding import EmbeddingClassifier
    from router.decide.classify.heuristic import HeuristicClassifier
    from router.decide.classify.static import StaticClassifier

    registry: dict[str, ClassifierFactory] = {
        HeuristicClassifier.name: lambda c, _cfg: HeuristicClassifier(),
        EmbeddingClassifier.name: lambda c, cfg: EmbeddingClassifier.from_config(c, cfg),
        StaticClassifier.name: lambda c, cfg: StaticClassifier.from_config(c, cfg),
    }
    return registry[config.classifier.kind](config.classifier, config)
