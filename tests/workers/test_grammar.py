"""What the grammars accept, on SmolLM2's real tokenizer, without a model: objects that list their properties are
closed to others unless the schema opens them, `tool_choice: auto` with a `response_format` takes either one
tool call or an answer in the schema, and the masks come out the same whichever way they are applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from workers.grammar import GrammarCompiler, GrammarMasks, MatcherConstraint, ToolSpec, _closed

WEATHER = ToolSpec("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@pytest.fixture(scope="module")
def tokenizer(checkpoint_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(checkpoint_dir / "smollm2-135m-instruct")


@pytest.fixture(scope="module")
def compiler(tokenizer: PreTrainedTokenizerBase) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, len(tokenizer))


def accepts(constraint: Any, tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Does the grammar take all of `text` and end there?"""
    assert isinstance(constraint, MatcherConstraint)
    matcher = constraint._matcher
    tokens = tokenizer.encode(text, add_special_tokens=False)
    return (
        matcher.validate_tokens(tokens) == len(tokens)
        and matcher.try_consume_tokens(tokens) == len(tokens)
        and (matcher.is_accepting())
    )


def test_objects_with_listed_properties_are_closed_unless_the_schema_opens_them() -> None:
    nested = {
        "type": "object",
        "properties": {"where": {"type": "object", "properties": {"city": {"type": "string"}}}},
        "$defs": {"Unit": {"type": "object", "properties": {"name": {"type": "string"}}}},
        "anyOf": [{"type": "object", "properties": {}}],
    }
    closed = _closed(nested)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["where"]["additionalProperties"] is False
    assert closed["$defs"]["Unit"]["additionalProperties"] is False
    assert closed["anyOf"][0]["additionalProperties"] is False
    assert _closed({"type": "object"}) == {"type": "object"}, "json_object: any object"
    opened = {"type": "object", "properties": {}, "additionalProperties": {"type": "integer"}}
    assert _closed(opened) == opened
    assert "additionalProperties" not in nested, "the request's own schema is left as it was"


def test_tool_arguments_take_only_the_declared_parameters(
    compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase
) -> None:
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert accepts(compiler.tool_call([WEATHER]), tokenizer, call)
    extra = call.replace('"Paris"}', '"Paris", "type": "string"}')
    reordered = '<tool_call>\n{"arguments": {"city": "Paris"}, "name": "get_weather"}\n</tool_call>'
    assert not accepts(compiler.tool_call([WEATHER]), tokenizer, reordered), "the name comes first (streaming)"
    assert not accepts(compiler.tool_call([WEATHER]), tokenizer, extra)
    empty = ToolSpec("ping", {})
    assert accepts(
        compiler.tool_call([empty]), tokenizer, '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>'
    )
    named = '<tool_call>\n{"name": "ping", "arguments": {"function-name": "ping"}}\n</tool_call>'
    assert not accepts(compiler.tool_call([empty]), tokenizer, named)


def test_auto_tools_with_a_schema_take_a_call_or_an_answer(
    compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase
) -> None:
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    answer = '{"name": "Marie Curie"}'
    for text in (call, answer):
        assert accepts(compiler.call_or_json([WEATHER], PERSON), tokenizer, text), text
    for text in ("Marie Curie", '{"city": "Paris"}', call.replace("get_weather", "get_time")):
        assert not accepts(compiler.call_or_json([WEATHER], PERSON), tokenizer, text), text


def test_both_ways_of_applying_a_mask_agree(compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase) -> None:
    """numpy on float32 CPU logits; the device path (packed words unpacked with torch, what a GPU runs) on bf16."""
    vocab = len(tokenizer) + 5  # an embedding padded past the tokenizer's vocabulary
    padded = GrammarCompiler(tokenizer, vocab)
    masks = GrammarMasks(3, vocab, torch.device("cpu"))
    rows = [padded.json_schema(PERSON), padded.tool_call([WEATHER])]
    masks.fill(rows)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.zeros(3, vocab, dtype=dtype)
        masks.apply(logits, [2, 0])
        results.append(torch.isfinite(logits))
    numpy_way, torch_way = results
    assert torch.equal(numpy_way, torch_way)
    assert torch_way[1].all(), "row 1 is not constrained"
    allowed = torch_way[2].nonzero().flatten().tolist()
    assert tokenizer.decode(allowed[:1]).startswith("{") and len(allowed) < 50, "JSON opens with {"
    assert not torch_way[[0, 2], len(tokenizer) :].any(), "no token past the tokenizer's vocabulary"
    assert torch_way[0].sum() < 10, "a tool call opens with <tool_call>"
