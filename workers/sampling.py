"""Next-token choice per row: greedy at temperature 0, else temperature + top-p, seeded per request."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    """Token id -> value added to its logit, already clamped to [-100, 100]."""
    logprobs: int = -1
    """-1: no log-probabilities; else the chosen token's and this many alternatives (top_logprobs, 0-20)."""


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> torch.Tensor:
    """One token per row of `logits` [rows, vocab], as a tensor on the logits' device (no host sync)."""
    chosen = logits.argmax(dim=-1)
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if p.temperature == 0.0:
            continue
        probs = torch.softmax(logits[row] / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < p.top_p
            sorted_probs = sorted_probs * keep
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        chosen[row] = torch.multinomial(probs, 1, generator=generator)[0]
    return chosen


def generator_for(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    if params.seed is None or params.temperature == 0.0:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed)
    return generator
