"""In-process counters with labels: what the router did, ready to be exported (JSON in /ready today).

counters.inc("fallback", source="large", target="remote", reason="vram_exhausted")
"""

from __future__ import annotations

from collections import Counter
from typing import Any

Labels = tuple[tuple[str, str], ...]


class Counters:
    def __init__(self) -> None:
        self._counts: Counter[tuple[str, Labels]] = Counter()

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        self._counts[(name, tuple(sorted(labels.items())))] += amount

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for (name, labels), value in sorted(self._counts.items()):
            out.setdefault(name, []).append({**dict(labels), "value": value})
        return out
