"""Grammar-constrained decoding with llguidance: compiling JSON schemas and tool-call grammars into per-row
token masks, and applying those masks to a batch's logits.

llguidance was chosen over xgrammar by measuring (bench/RESULTS.md): one small wheel with no dependencies,
schemas compile in about a millisecond, and a mask costs about 0.1 ms per token on SmolLM2's vocabulary.
Its own `apply_token_bitmask_inplace` goes through `torch.compile`, which needs a C++ compiler on the CPU;
`GrammarMasks` below unpacks the bitmask itself.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import llguidance
import llguidance.hf
import llguidance.torch
import numpy as np
import torch

COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""One way to write JSON: a small model given free whitespace can loop on blank lines until max_tokens."""


class GrammarError(ValueError):
    """The schema or grammar cannot be compiled (the request is answered with a 400)."""


class TokenConstraint(Protocol):
    """One request's grammar state: which tokens may come next, advanced by each accepted token."""

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into `bitmask[row]` (int32 words, bit i of word w: token 32 w + i)."""

    def accept(self, token: int) -> None: ...

    @property
    def stopped(self) -> bool:
        """The grammar is complete and allows nothing more: the request ends here."""


class MatcherConstraint:
    """A `TokenConstraint` kept by an llguidance matcher."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._matcher = matcher

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        llguidance.torch.fill_next_token_bitmask(self._matcher, bitmask, row)

    def accept(self, token: int) -> None:
        # A token outside the mask cannot be sampled; a rejected one (a bug) only stops the grammar's advice.
        self._matcher.consume_token(token)

    @property
    def stopped(self) -> bool:
        return bool(self._matcher.is_stopped())


class GrammarMasks:
    """The token masks of a batch's constrained rows, each step: one preallocated bitmask, the rows' grammars
    filled into it together (llguidance's executor computes them in parallel, outside the GIL), applied to the
    logits on their own device.

    On a GPU the packed bitmask (a 4-byte word per 32 tokens) is copied from pinned memory and unpacked there: a copy
    from pageable memory would wait for the forward pass queued before it, and the host work of filling the masks
    is meant to overlap that pass. On the CPU the bits are unpacked with numpy (tens of microseconds for a 49k
    vocabulary; shifting int32 tensors bit by bit took milliseconds) and filled through numpy too: `np.putmask`
    was several times faster than torch's `masked_fill_` on a busy two-core machine (bench/RESULTS.md)."""

    def __init__(self, rows: int, vocab: int, device: torch.device) -> None:
        self.vocab = vocab
        self.device = device
        shape = llguidance.torch.get_bitmask_shape(rows, vocab)
        self.bitmask = torch.full(shape, -1, dtype=torch.int32, pin_memory=device.type == "cuda")
        self._executor = llguidance.LLExecutor()
        self._shifts = torch.arange(32, dtype=torch.int32, device=device)

    def mask(self, logits: torch.Tensor, constrained: list[tuple[int, TokenConstraint]]) -> None:
        """Set to -inf, in `logits` [batch, vocab], every token the grammar of row i disallows, for each (i, grammar)
        of `constrained`."""
        self.fill([constraint for _, constraint in constrained])
        self.apply(logits, [row for row, _ in constrained])

    def fill(self, constraints: list[TokenConstraint]) -> None:
        """The next-token masks of `constraints` into rows 0..len-1 of the bitmask, in order."""
        matchers = [(c._matcher, j) for j, c in enumerate(constraints) if isinstance(c, MatcherConstraint)]
        if matchers:
            llguidance.torch.fill_next_token_bitmask_par(self._executor, matchers, self.bitmask)
        for j, constraint in enumerate(constraints):
            if not isinstance(constraint, MatcherConstraint):
                constraint.fill(self.bitmask, j)

    def apply(self, logits: torch.Tensor, rows: list[int]) -> None:
        """Mask `logits[rows[j]]` with bitmask row j."""
        vocab = logits.shape[-1]
        if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float16, torch.float64):
            packed = self.bitmask[: len(rows)].numpy().view(np.uint8)
            bits = np.unpackbits(packed, axis=1, bitorder="little")[:, :vocab]
            if bits.shape[1] < vocab:  # tokens past the tokenizer's vocabulary (padding rows of the embedding)
                bits = np.pad(bits, ((0, 0), (0, vocab - bits.shape[1])))
            array = logits.numpy()
            for j, row in enumerate(rows):
                np.putmask(array[row], bits[j] == 0, -np.inf)
            return
        words = self.bitmask[: len(rows)].to(logits.device, non_blocking=True)
        allowed = ((words.unsqueeze(-1) >> self._shifts.to(logits.device)) & 1).flatten(1)
        disallowed = allowed[:, :vocab] == 0
        if disallowed.shape[1] < vocab:
            disallowed = torch.nn.functional.pad(disallowed, (0, vocab - disallowed.shape[1]), value=True)
        for j, row in enumerate(rows):
            logits[row].masked_fill_(disallowed[j], float("-inf"))


@dataclass(frozen=True)
class ToolSpec:
    name: str
    parameters: dict[str, Any]


class GrammarCompiler:
    """Builds constraints for one tokenizer; the tokenizer conversion is done once, in the background.

    It takes about a second for a real model's tokenizer, but minutes for some (the benchmarks' random 152k-token
    one), so it runs in a thread started here: the worker is ready for plain requests at once, and the first
    constrained request waits for the conversion to finish."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._converted: Future[Any] = Future()
        threading.Thread(target=self._convert, args=(tokenizer,), name="grammar-tokenizer", daemon=True).start()

    def _convert(self, tokenizer: Any) -> None:
        try:
            self._converted.set_result(llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size))
        except BaseException as exc:  # handed to the first constrained request, which fails with it
            self._converted.set_exception(exc)

    @property
    def ready(self) -> bool:
        return self._converted.done()

    def wait(self) -> None:
        """Block until the conversion is done (from a worker thread: it can take minutes)."""
        self._converted.exception()

    @property
    def _tokenizer(self) -> Any:
        return self._converted.result()

    def json_schema(self, schema: dict[str, Any]) -> TokenConstraint:
        return self._constraint(llguidance.LLMatcher.grammar_from_json_schema(_compact(schema)))

    def tool_call(self, tools: list[ToolSpec]) -> TokenConstraint:
        """Exactly one `<tool_call>{"name": ..., "arguments": ...}</tool_call>` calling one of `tools`."""
        return self._constraint(llguidance.LLMatcher.grammar_from_lark(f"start: call\n{_call_rules(tools)}"))

    def call_or_json(self, tools: list[ToolSpec], schema: dict[str, Any]) -> TokenConstraint:
        """`tool_choice: auto` with a `response_format`: either one tool call or an answer in the schema."""
        lark = f"start: call | answer\n{_call_rules(tools)}\nanswer: %json {json.dumps(_compact(schema))}"
        return self._constraint(llguidance.LLMatcher.grammar_from_lark(lark))

    def _constraint(self, grammar: str) -> TokenConstraint:
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._tokenizer)
        if failed:
            raise GrammarError("; ".join(messages) or "the grammar does not compile")
        matcher = llguidance.LLMatcher(self._tokenizer, grammar)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return MatcherConstraint(matcher)


def _call_rules(tools: list[ToolSpec]) -> str:
    """Lark rules: `call` is one `<tool_call>` block whose JSON names one of `tools` with valid arguments."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": _compact(tool.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return 'call: "<tool_call>\\n" body "\\n</tool_call>"\nbody: %json ' + json.dumps(_compact(schema))


def _compact(schema: dict[str, Any]) -> dict[str, Any]:
    if not schema:
        schema = {"type": "object", "properties": {}}  # a function without parameters takes an empty object
    schema = _closed(schema)
    return {**schema, "x-guidance": {**COMPACT, **schema.get("x-guidance", {})}}


SUBSCHEMAS = ("items", "additionalItems", "contains", "not", "if", "then", "else")
SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def _closed(schema: Any) -> Any:
    """The schema with every object that lists its `properties` but says nothing of others closed to them
    (`additionalProperties: false`). Valid answers stay valid; what changes is that a small model can no longer
    fill an open object with keys copied from the schema itself (seen with SmolLM2: `{"input": 3, "type":
    "integer", ...}`), which no client asked for. A schema that allows more keys says so and keeps them."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    for key in SUBSCHEMAS:
        if key in out:
            out[key] = _closed(out[key])
    for key in SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_closed(item) for item in out[key]]
    for key in SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _closed(sub) for name, sub in out[key].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _closed(out["additionalProperties"])
    return out
