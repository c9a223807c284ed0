"""The prompts being prefilled: each joining request's progress, and the chunks the next packed forward takes.

A request joins holding its cache blocks and a batch slot; its prompt then goes into the cache over one or more
packed forwards. Each forward takes at most `budget` tokens in all, first come first served: the rest of the
oldest unfinished prompt, then the next prompt's, until the budget is spent. A prompt longer than what is left
goes on from its offset in the next forward; a short prompt behind it waits for it, as it would in a queue.
The engine runs one such forward, then one decode step of the running requests, so a long prompt joining
holds up decoding for one forward at a time, never for its whole prefill.

Only a forward's first part can start past offset 0 (the prompt the last forward cut), so one forward reads
back at most `max_seq_len` + `budget` cached positions, however many prompts it packs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from workers.runner import PrefillPart

T = TypeVar("T")


@dataclass(eq=False)
class Joining(Generic[T]):
    """One request whose prompt is being prefilled; `owner` is the engine's record of it."""

    owner: T
    prompt: Sequence[int]
    blocks: list[int]
    done: int = 0
    """Prompt tokens already in the cache (the offset its next chunk starts at)."""

    @property
    def remaining(self) -> int:
        return len(self.prompt) - self.done


class PrefillQueue(Generic[T]):
    """Used from the engine thread only, except `backlog`, a plain int other threads may read."""

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"a prefill forward needs a budget of at least one token, not {budget}")
        self.budget = budget
        self._queue: list[Joining[T]] = []
        self.backlog = 0
        """Prompt tokens still to prefill: work ahead of a request that joins now."""

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Joining[T]]:
        return iter(list(self._queue))

    def add(self, owner: T, prompt: Sequence[int], blocks: list[int]) -> Joining[T]:
        if not prompt:
            raise ValueError("an empty prompt has nothing to prefill")
        joining = Joining(owner, prompt, blocks)
        self._queue.append(joining)
        self.backlog += len(prompt)
        return joining

    def remove(self, joining: Joining[T]) -> None:
        self._queue.remove(joining)
        self.backlog -= joining.remaining

    def next_forward(self, budget: int | None = None) -> list[tuple[Joining[T], PrefillPart]]:
        """The chunks of the next forward, oldest prompt first, `budget` tokens at most (default: the queue's);
        empty when none waits."""
        parts: list[tuple[Joining[T], PrefillPart]] = []
        left = self.budget if budget is None else budget
        if left < 1:
            raise ValueError(f"a prefill forward needs a budget of at least one token, not {left}")
        for joining in self._queue:
            if left == 0:
                break
            n = min(joining.remaining, left)
            end = joining.done + n
            tokens = joining.prompt[joining.done : end]
            parts.append((joining, PrefillPart(joining.blocks, tokens, joining.done, end == len(joining.prompt))))
            left -= n
        return parts

    def advance(self, parts: Sequence[tuple[Joining[T], PrefillPart]]) -> list[Joining[T]]:
        """Record that these chunks are in the cache; returns the prompts they completed, in order (they leave)."""
        completed = []
        for joining, part in parts:
            joining.done += len(part.tokens)
            self.backlog -= len(part.tokens)
            if joining.remaining == 0:
                self._queue.remove(joining)
                completed.append(joining)
        return completed
