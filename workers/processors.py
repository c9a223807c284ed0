"""Logit processing inside the batched step, on the device: penalties, logit_bias and log-probabilities.

Per cache row the engine keeps a token-count tensor of what the row generated so far (OpenAI's penalties,
like vLLM's, look at the completion only, not the prompt):
  logits[t] -= presence_penalty * (count[t] > 0) + frequency_penalty * count[t]
then adds the row's `logit_bias` (a sparse add). Temperature and top-p are applied after this (`sampling.py`).

Log-probabilities are those of the processed distribution before temperature: `log_softmax` of the logits
after penalties, bias and the engine's min_tokens end-of-sequence mask. This is vLLM's `processed_logprobs`
mode (vLLM's default, `raw_logprobs`, ignores penalties and bias); we chose it because OpenAI's own logprobs
reflect `logit_bias`, so a biased token shows the probability it was sampled with (at temperature 1). A token
masked to -inf reports -9999.0, as OpenAI does, since JSON has no infinity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_LOGPROB = -9999.0
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]
    """The `top_logprobs` most likely tokens of that step, most likely first."""


@dataclass(frozen=True)
class StepLogprobs:
    """One step's log-probabilities on the device: the chosen token's [rows], the top-k's values and ids [rows, k]."""

    chosen: torch.Tensor
    top_values: torch.Tensor
    top_ids: torch.Tensor


class RowProcessors:
    """Per-row penalty and bias state for the engine's cache rows [0, max_batch), created lazily (the vocabulary
    size comes with the first logits) and touched only while some row asks for it, so a plain batch pays nothing."""

    def __init__(self, max_batch: int, device: torch.device) -> None:
        self.max_batch = max_batch
        self.device = device
        self._presence = [0.0] * max_batch
        self._frequency = [0.0] * max_batch
        self._bias: list[dict[int, float]] = [{} for _ in range(max_batch)]
        self._logprobs = [-1] * max_batch
        """-1: none; else how many alternatives (top_logprobs) the row wants."""
        self._counts: torch.Tensor | None = None
        self._penalties: torch.Tensor | None = None
        """[max_batch, 2] presence and frequency, on the device; rebuilt when a row's values change."""
        self._bias_index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._bias_key: tuple[int, ...] = ()
        self._dirty = True

    # --- rows joining, moving, leaving (host side, between steps) ---------------------------------

    def set_row(self, row: int, *, presence: float, frequency: float, bias: dict[int, float], logprobs: int) -> None:
        if self._counts is not None:
            self._counts[row].zero_()
        self._presence[row], self._frequency[row] = presence, frequency
        self._bias[row] = bias
        self._logprobs[row] = logprobs
        self._dirty = True

    def move_row(self, src: int, dst: int) -> None:
        if self._counts is not None:
            self._counts[dst].copy_(self._counts[src])
        self._presence[dst], self._frequency[dst] = self._presence[src], self._frequency[src]
        self._bias[dst], self._logprobs[dst] = self._bias[src], self._logprobs[src]
        self.set_row(src, presence=0.0, frequency=0.0, bias={}, logprobs=-1)

    def _penalised(self, row: int) -> bool:
        return bool(self._presence[row] or self._frequency[row])

    # --- inside the step (device side, no host sync) ----------------------------------------------

    def apply(self, logits: torch.Tensor, start: int) -> None:
        """Penalise and bias `logits` [rows, vocab] in place; they belong to cache rows [start, start + rows)."""
        rows = range(start, start + logits.shape[0])
        if any(self._penalised(r) for r in rows):
            counts = self._counts_for(logits)[start : start + len(rows)]
            penalties = self._penalty_tensor()[start : start + len(rows)]
            present = (counts > 0).to(logits.dtype)
            logits -= penalties[:, :1] * present + penalties[:, 1:] * counts.to(logits.dtype)
        if any(self._bias[r] for r in rows):
            row_ids, token_ids, values = self._bias_tensors(rows)
            logits.index_put_((row_ids - start, token_ids), values.to(logits.dtype), accumulate=True)

    def record(self, tokens: torch.Tensor, start: int) -> None:
        """Count the chosen `tokens` [rows] for the penalised rows among [start, start + rows)."""
        rows = range(start, start + tokens.shape[0])
        if self._counts is None or not any(self._penalised(r) for r in rows):
            return
        ones = torch.ones_like(tokens, dtype=self._counts.dtype)
        self._counts[start : start + len(rows)].scatter_add_(1, tokens[:, None], ones[:, None])

    def logprobs(self, logits: torch.Tensor, chosen: torch.Tensor, start: int) -> StepLogprobs | None:
        """The processed distribution's log-probabilities, when any row of [start, start + rows) asks for them."""
        wanted = self._logprobs[start : start + logits.shape[0]]
        if max(wanted) < 0:
            return None
        logp = torch.log_softmax(logits.float(), dim=-1).clamp_(min=MIN_LOGPROB)
        top_values, top_ids = logp.topk(max(max(wanted), 0), dim=-1)
        return StepLogprobs(logp.gather(1, chosen[:, None])[:, 0], top_values, top_ids)

    def wants_logprobs(self, row: int) -> int:
        return self._logprobs[row]

    def _counts_for(self, logits: torch.Tensor) -> torch.Tensor:
        if self._counts is None:
            self._counts = torch.zeros((self.max_batch, logits.shape[-1]), dtype=torch.int32, device=self.device)
        return self._counts

    def _penalty_tensor(self) -> torch.Tensor:
        if self._dirty or self._penalties is None:
            values = list(zip(self._presence, self._frequency, strict=True))
            self._penalties = torch.tensor(values, dtype=torch.float32, device=self.device)
            self._bias_index = None
            self._dirty = False
        return self._penalties

    def _bias_tensors(self, rows: range) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, token, value) of every bias entry of `rows`, rebuilt only when rows or their biases change (a
        host-to-device copy from pageable memory waits for the device, stalling the step queued ahead)."""
        key = (rows.start, rows.stop)
        if self._dirty:
            self._penalty_tensor()
        if self._bias_index is None or self._bias_key != key:
            entries = [(r, t, v) for r in rows for t, v in self._bias[r].items()]
            row_ids, token_ids, values = zip(*entries, strict=True)
            self._bias_index = (
                torch.tensor(row_ids, dtype=torch.long, device=self.device),
                torch.tensor(token_ids, dtype=torch.long, device=self.device),
                torch.tensor(values, dtype=torch.float32, device=self.device),
            )
            self._bias_key = key
        return self._bias_index


HostLogprobs = tuple[list[float], list[list[float]], list[list[int]]]


def host_logprobs(step: StepLogprobs | None) -> HostLogprobs | None:
    """One step's log-probabilities on the host: copied when the step's tokens are (the same sync point)."""
    if step is None:
        return None
    return step.chosen.tolist(), step.top_values.tolist(), step.top_ids.tolist()


def row_logprobs(step: HostLogprobs | None, i: int, token: int, wanted: int) -> TokenLogprob | None:
    if step is None or wanted < 0:
        return None
    chosen, values, ids = step
    return TokenLogprob(token, chosen[i], tuple(zip(ids[i][:wanted], values[i][:wanted], strict=True)))


def take(pending: list[TokenLogprob]) -> tuple[TokenLogprob, ...]:
    taken = tuple(pending)
    pending.clear()
    return taken
