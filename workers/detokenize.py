"""Incremental detokenization with stop strings: text deltas that never split a character or leak a stop.

Decodes a short window of recent ids each step (the prefix/read offsets trick), so the cost per
token stays constant however long the answer grows.
"""

from __future__ import annotations

from typing import Any


class IncrementalText:
    """Feeds token ids, returns the new text each time, holding back what could begin a stop string."""

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._text = ""
        self._sent = 0
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self.stopped = False

    def push(self, token: int) -> str:
        self._ids.append(token)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self._ids[self._prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # a multi-byte character or a merge is not complete yet
        self._text += after[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        text = self._text
        for stop in self._stop:
            at = text.find(stop, max(0, self._sent - len(stop)))
            if at != -1:
                self.stopped = True
                self._text = text[:at]
                return self._flush(len(self._text))
        return self._flush(max(self._sent, len(text) - self._hold))

    def finish(self) -> str:
        """Whatever was held back, at the end of generation."""
        return self._flush(len(self._text))

    @property
    def text(self) -> str:
        return self._text

    def _flush(self, upto: int) -> str:
        delta = self._text[self._sent : upto]
        self._sent = max(self._sent, upto)
        return delta
