"""The Prometheus text exposition format, as far as reading an engine's gauges needs: samples with labels."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """Every sample of the page; comments, blank lines and lines that are not samples are skipped."""
    samples: list[Sample] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, raw = match.groups()
        try:
            value = float(raw)
        except ValueError:
            continue
        if math.isnan(value):
            continue
        found = {k: _unescape(v) for k, v in _LABEL.findall(labels or "")}
        samples.append(Sample(name, found, value))
    return samples


def named(samples: list[Sample], *names: str) -> list[Sample]:
    """The samples of the first of `names` the page has (engines renamed metrics across versions)."""
    for name in names:
        found = [s for s in samples if s.name == name]
        if found:
            return found
    return []


def _unescape(value: str) -> str:
    return value.replace(r"\"", '"').replace(r"\n", "\n").replace("\\\\", "\\")
