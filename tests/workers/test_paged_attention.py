"""Decode attention read in place from the paged cache (workers/paged_attention.py and its wiring).

The kernel itself is Triton, which the CPU build of torch does not ship: it is checked against a float32
reference where a GPU is (the last test here, and bench/paged_attention_gpu.py, bench/paged_gpu.py on the H100).
On the CPU the wiring is checked with a plain-torch implementation of the kernel's contract standing in for it:
the cache hands the attention its pools, the runner hands it the block table and positions, and greedy decoding
through that path still equals transformers' `generate`.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest
import torch
from transformers import LlamaForCausalLM

from router.core.workers import WorkerConfig
from tests.workers.test_engine import reference, tiny_engine
from workers import paged_attention, setup
from workers.engine import Failed, Finished, GenerationRequest, TextDelta
from workers.sampling import SamplingParams


def contract(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    table: torch.Tensor,
    positions: torch.Tensor,
    *,
    scale: float,
    width: int,
    block_size: int,
) -> torch.Tensor:
    """What the kernel computes, row by row in float32: attention of each row's one query token over that row's
    positions [0, position], their slots looked up in the block table."""
    rows, heads, _ = query.shape
    groups = heads // keys.shape[1]
    out = torch.empty_like(query)
    for row in range(rows):
        seen = torch.arange(int(positions[row, 0]) + 1)
        assert len(seen) <= width
        slots = table[row, seen // block_size] * block_size + seen % block_size
        k = keys[slots].float().repeat_interleave(groups, dim=1)
        v = values[slots].float().repeat_interleave(groups, dim=1)
        weights = torch.einsum("hd,nhd->hn", query[row].float(), k).mul(scale).softmax(-1)
        out[row] = torch.einsum("hn,nhd->hd", weights, v).to(query.dtype)
    return out


def test_contract_matches_the_gathered_path_on_the_same_cache() -> None:
    """The stand-in is the gathered path's arithmetic, so the wiring test below compares like with like."""
    torch.manual_seed(0)
    from workers.attention import grouped_decode_attention

    rows, heads, kv_heads, dim, block, width = 3, 6, 2, 16, 4, 32
    keys, values = torch.randn(32 * block, kv_heads, dim), torch.randn(32 * block, kv_heads, dim)  # 32 blocks
    table = torch.randperm(31)[: rows * (width // block)].add(1).view(rows, width // block)
    positions = torch.tensor([[0], [13], [31]])
    query = torch.randn(rows, heads, 1, dim)
    span = torch.arange(width)[None, :]
    slots = table[torch.arange(rows)[:, None], span // block] * block + span % block
    mask = (span <= positions).view(rows, 1, 1, width)

    class Heads(torch.nn.Module):
        num_key_value_groups = heads // kv_heads

    gathered, _ = grouped_decode_attention(
        Heads(), query, keys[slots].transpose(1, 2), values[slots].transpose(1, 2), mask, scaling=0.25
    )
    got = contract(query[:, :, 0], keys, values, table, positions, scale=0.25, width=width, block_size=block)
    torch.testing.assert_close(got, gathered[:, 0])


@pytest.mark.parametrize(("block_size", "padded"), [(8, False), (4, True)])
def test_decoding_read_in_place_matches_generate(
    model: LlamaForCausalLM, monkeypatch: pytest.MonkeyPatch, block_size: int, padded: bool
) -> None:
    calls: list[tuple[int, int, int]] = []

    def stand_in(
        query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *args: torch.Tensor, **kw: int
    ) -> torch.Tensor:
        assert keys.dim() == 3 and keys.shape[0] == engine.cache.num_blocks * block_size  # the pool, not a gather
        calls.append((query.shape[0], kw["width"], kw["block_size"]))
        return contract(query, keys, values, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(paged_attention, "decode", stand_in)
    engine = tiny_engine(model, max_len=256, block_size=block_size, padded=padded, prefill_chunk=7, smallest_width=16)
    engine.cache.read_in_place = True
    assert engine.runner.read_in_place
    jobs = [([1, 2, 3, 4, 5], 20, 0.0), ([7, 8, 9], 30, 0.0), (list(range(10, 40)), 10, 0.05), ([50, 60], 25, 0.1)]

    async def run(prompt: list[int], n: int, delay: float) -> str:
        await asyncio.sleep(delay)
        request = GenerationRequest(f"r{delay}-{len(prompt)}", prompt, n, SamplingParams(temperature=0.0))
        stream = engine.submit(request, asyncio.get_running_loop())
        text = ""
        while not isinstance(event := await stream.next(), Finished):
            assert not isinstance(event, Failed), event.error
            assert isinstance(event, TextDelta)
            text += event.text
        return text

    async def main() -> list[str]:
        return list(await asyncio.gather(*(run(*job) for job in jobs)))

    engine.start()
    try:
        texts = asyncio.run(main())
    finally:
        engine.stop()
    for (prompt, n, _), text in zip(jobs, texts, strict=True):
        assert text == reference(model, prompt, n)
    # Every decode step of both layers went through it, at the step's width and the cache's block size; prefill
    # (many query tokens) did not.
    assert len(calls) >= 2 * engine.stats.decode_steps
    assert {b for _, _, b in calls} == {block_size}
    assert {w for _, w, _ in calls} <= set(engine.runner.widths)
    assert engine.cache.allocator.free == engine.cache.allocator.total


def test_the_gather_path_is_untouched_when_not_reading_in_place(model: LlamaForCausalLM) -> None:
    engine = tiny_engine(model)
    assert not engine.cache.read_in_place
    engine.cache.decode_mode(torch.tensor([[3], [0]]), 16)
    keys, _ = engine.cache.update(torch.zeros(2, 2, 1, 16), torch.zeros(2, 2, 1, 16), 0)
    assert keys.shape == (2, 2, 16, 16)  # [rows, kv_heads, width, head_dim]: gathered
    engine.cache.read_in_place = True
    engine.cache.decode_mode(torch.tensor([[3], [0]]), 16)
    keys, _ = engine.cache.update(torch.zeros(2, 2, 1, 16), torch.zeros(2, 2, 1, 16), 0)
    assert keys is engine.cache.keys[0]
    # A packed prefill always gathers (its attention is transformers' own sdpa over the prompt's chunks).
    engine.cache.prefill_mode([([1], 0, 3)])
    keys, _ = engine.cache.update(torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16), 0)
    assert keys.shape == (1, 2, 3, 16)


def test_decode_attention_setting_resolves_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = WorkerConfig(model="demo:small")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert worker.decode_attention == "auto"
    assert not setup._read_in_place(worker, cpu)
    monkeypatch.setattr(paged_attention, "available", lambda: True)
    assert setup._read_in_place(worker, cuda)
    assert not setup._read_in_place(msgspec.structs.replace(worker, decode_attention="gather"), cuda)
    with pytest.raises(RuntimeError, match="in-place needs a CUDA device and Triton"):
        setup._read_in_place(msgspec.structs.replace(worker, decode_attention="in-place"), cpu)
    monkeypatch.setattr(paged_attention, "available", lambda: False)
    assert not setup._read_in_place(worker, cuda)
    with pytest.raises(RuntimeError, match="in-place needs"):
        setup._read_in_place(msgspec.structs.replace(worker, decode_attention="in-place"), cuda)


@pytest.mark.skipif(not (paged_attention.available() and torch.cuda.is_available()), reason="needs Triton and CUDA")
@pytest.mark.parametrize(("heads", "kv_heads", "lengths", "width"), [(12, 2, [5], 256), (28, 4, [1500, 700, 3], 2048)])
def test_kernel_matches_the_contract_on_a_gpu(heads: int, kv_heads: int, lengths: list[int], width: int) -> None:
    torch.manual_seed(0)
    block, dim = 16, 128
    blocks = sum(-(-(n + 1) // block) for n in lengths) + 1
    keys = torch.randn(blocks * block, kv_heads, dim, dtype=torch.bfloat16, device="cuda")
    values = torch.randn_like(keys)
    table = torch.zeros(len(lengths), width // block, dtype=torch.long)
    order, used = torch.randperm(blocks - 1) + 1, 0
    for row, n in enumerate(lengths):
        own = -(-(n + 1) // block)
        table[row, :own] = order[used : used + own]
        used += own
    positions = torch.tensor(lengths).view(-1, 1)
    query = torch.randn(len(lengths), heads, dim, dtype=torch.bfloat16, device="cuda")
    kwargs = {"scale": dim**-0.5, "width": width, "block_size": block}
    got = paged_attention.decode(query, keys, values, table.cuda(), positions.cuda(), **kwargs)  # type: ignore[arg-type]
    want = contract(query.cpu(), keys.cpu(), values.cpu(), table, positions, **kwargs)  # type: ignore[arg-type]
    torch.testing.assert_close(got.cpu(), want, atol=2e-2, rtol=2e-2)
