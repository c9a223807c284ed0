"""Decode attention over grouped KV heads (workers/attention.py) against transformers' repeat-the-heads sdpa."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations.sdpa_attention import repeat_kv

from workers import attention
from workers.attention import NAME, grouped_decode_attention, register


class Heads(torch.nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups


@pytest.mark.parametrize(("heads", "kv_heads"), [(28, 4), (12, 2), (9, 3), (4, 4)])
def test_grouped_decode_matches_repeated_heads(heads: int, kv_heads: int) -> None:
    torch.manual_seed(0)
    rows, width, dim = 5, 24, 16
    query = torch.randn(rows, heads, 1, dim)
    key, value = torch.randn(rows, kv_heads, width, dim), torch.randn(rows, kv_heads, width, dim)
    lengths = torch.tensor([1, 7, 24, 13, 2])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).view(rows, 1, 1, width)
    groups = heads // kv_heads
    expected = F.scaled_dot_product_attention(
        query, repeat_kv(key, groups), repeat_kv(value, groups), attn_mask=mask, scale=0.3
    ).transpose(1, 2)
    out, _ = grouped_decode_attention(Heads(groups), query, key, value, mask, scaling=0.3)
    assert out.shape == (rows, 1, heads, dim)
    torch.testing.assert_close(out, expected)
    # The masked-out slots really are ignored: garbage there changes nothing.
    key[mask.view(rows, width).logical_not()[:, None, :].expand_as(key[..., 0])] = 1e4
    again, _ = grouped_decode_attention(Heads(groups), query, key, value, mask, scaling=0.3)
    torch.testing.assert_close(again, expected)


def test_prefill_goes_to_transformers_sdpa_and_the_model_generates_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=200,
    )
    plain = LlamaForCausalLM(config).eval()
    grouped = LlamaForCausalLM(config).eval()
    grouped.load_state_dict(plain.state_dict())
    grouped.set_attn_implementation(register())
    assert grouped.config._attn_implementation == NAME
    grouped_steps = []

    class Spy:
        @staticmethod
        def scaled_dot_product_attention(query: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            grouped_steps.append(query.shape)
            return F.scaled_dot_product_attention(query, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(attention, "F", Spy)
    prompt = torch.tensor([[5, 17, 3, 99, 42, 8, 150]])
    with torch.inference_mode():
        a = plain.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False)
        b = grouped.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert a.tolist() == b.tolist()
    # Every decode step (19 of them, in each of the 2 layers) went through the grouped path: 2 KV heads, 3 query
    # heads each standing in as positions.
    assert len(grouped_steps) >= 19 * 2
    assert set(grouped_steps) == {torch.Size([1, 2, 3, 16])}
