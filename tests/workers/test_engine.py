"""The engine against transformers' own `generate`: batching, joins, the paged cache and chunked prefill change
nothing; the paged cache admits by blocks and gets every block back."""

from __future__ import annotations

import asyncio
import copy
import time

import pytest
import torch
from transformers import LlamaForCausalLM

from workers.attention import register
from workers.engine import Engine, Failed, FaultHook, Finished, GenerationRequest, RequestStream, TextDelta
from workers.grammar import TokenConstraint
from workers.kv_cache import PagedKVCache
from workers.ledger import VramExhausted, VramLedger
from workers.memory import SimulatedGpu
from workers.runner import ModelRunner, PrefillPart
from workers.sampling import SamplingParams


class LetterTokenizer:
    """One letter per token id: text equality then means token equality."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(65 + i % 26) for i in ids)


def tiny_engine(
    model: LlamaForCausalLM,
    *,
    max_len: int = 64,
    prefill_chunk: int = 512,
    prefill_chunk_idle: int | None = None,
    compiled: bool = False,
    eos_ids: range | list[int] = (),
    queue_size: int = 16,
    max_batch: int = 4,
    block_size: int = 8,
    num_blocks: int | None = None,
    smallest_width: int = 16,
    padded: bool = False,
    fault_hook: FaultHook | None = None,
    ledger_bytes: int | None = None,
) -> Engine:
    """`num_blocks` (the scratch block included) defaults to what max_batch full-length rows take, the old grid.
    `padded`: decode at bucket sizes as graphs do (padded rows on the scratch block). `ledger_bytes`: the ledger's
    budget, by default the pool's."""
    per_seq = -(-max_len // block_size)
    cache = PagedKVCache(
        layers=2,
        max_batch=max_batch,
        kv_heads=2,
        max_len=max_len,
        head_dim=16,
        dtype=torch.float32,
        device="cpu",
        num_blocks=num_blocks or max_batch * per_seq + 1,
        block_size=block_size,
    )
    runner = ModelRunner(
        grouped_attention(model),
        cache,
        use_graphs=False,
        prefill_chunk=prefill_chunk,
        prefill_chunk_idle=prefill_chunk_idle,
        compile=compiled,
        smallest_width=smallest_width,
    )
    runner.padded = runner.padded or padded
    ledger = VramLedger(
        SimulatedGpu(10**9),
        kv_bytes_per_token=512,
        fixed_bytes=0,
        pool_bytes=ledger_bytes or cache.allocator.total * cache.block_bytes,
        budget_fraction=1.0,
        margin_bytes=0,
        block_size=block_size,
    )
    return Engine(runner, LetterTokenizer(), ledger, eos_ids=eos_ids, queue_size=queue_size, fault_hook=fault_hook)


def grouped_attention(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """The engine's copy runs the worker's decode attention (grouped KV heads, workers/attention.py); `reference`
    keeps transformers' own sdpa."""
    engine_model = copy.deepcopy(model)
    engine_model.set_attn_implementation(register())
    return engine_model


def reference(model: LlamaForCausalLM, prompt: list[int], n: int) -> str:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return LetterTokenizer().decode(out[0, len(prompt) :].tolist())


@pytest.mark.parametrize(
    ("max_len", "prefill_chunk", "block_size", "padded", "compiled"),
    [
        (64, 512, 8, False, False),
        (64, 4, 4, True, False),  # chunks and blocks of 4: every chunk and many steps cross a block boundary
        (256, 7, 16, False, False),
        (256, 7, 3, True, False),  # chunks straddle blocks; rows padded up to buckets write the scratch block
        pytest.param(64, 512, 8, False, True, marks=pytest.mark.slow),
    ],
)
def test_batched_greedy_decoding_matches_generate(
    model: LlamaForCausalLM, max_len: int, prefill_chunk: int, block_size: int, padded: bool, compiled: bool
) -> None:
    engine = tiny_engine(
        model,
        max_len=max_len,
        prefill_chunk=prefill_chunk,
        compiled=compiled,
        block_size=block_size,
        padded=padded,
        smallest_width=16,  # widths 16, 32, 64...: steps change width bucket as sequences grow
    )
    free_blocks = engine.cache.allocator.free
    engine.start()
    # Staggered arrivals of different lengths: joins mid-batch (while others are mid-decode), rows swept and moved.
    jobs = [
        ([1, 2, 3, 4, 5], 20, 0.0),
        ([7, 8, 9], 30, 0.0),
        (list(range(10, 40)), 10, 0.05),
        ([50, 60], 25, 0.1),
        ([5] * 12, 15, 0.12),
        ([9] * 7, 12, 0.2),
    ]

    async def run(prompt: list[int], n: int, delay: float) -> tuple[str, Finished]:
        await asyncio.sleep(delay)
        request = GenerationRequest(f"r{delay}-{len(prompt)}", prompt, n, SamplingParams(temperature=0.0))
        stream = engine.submit(request, asyncio.get_running_loop())
        text = ""
        while True:
            event = await stream.next()
            if isinstance(event, TextDelta):
                text += event.text
            elif isinstance(event, Finished):
                return text, event
            else:
                assert not isinstance(event, Failed), event.error

    async def main() -> list[tuple[str, Finished]]:
        return list(await asyncio.gather(*(run(p, n, d) for p, n, d in jobs)))

    try:
        results = asyncio.run(main())
    finally:
        engine.stop()
    for (prompt, n, _), (text, finished) in zip(jobs, results, strict=True):
        assert text == reference(model, prompt, n)
        assert (finished.reason, finished.prompt_tokens, finished.completion_tokens) == ("length", len(prompt), n)
    assert engine.stats.largest_batch > 1
    assert engine.ledger.snapshot().reserved == 0
    assert engine.cache.allocator.free == free_blocks


def test_min_tokens_holds_back_end_of_sequence(model: LlamaForCausalLM) -> None:
    half_the_vocabulary_ends = range(150)
    engine = tiny_engine(model, eos_ids=half_the_vocabulary_ends, queue_size=4)
    engine.start()

    async def run(min_tokens: int) -> Finished:
        request = GenerationRequest(f"m{min_tokens}", [1, 2, 3], 30, SamplingParams(temperature=0.0), [], min_tokens)
        stream = engine.submit(request, asyncio.get_running_loop())
        while not isinstance(event := await stream.next(), Finished):
            assert not isinstance(event, Failed)
        return event

    async def main() -> list[Finished]:
        return list(await asyncio.gather(run(0), run(12), run(30)))

    try:
        free, held, forced = asyncio.run(main())
    finally:
        engine.stop()
    assert free.completion_tokens < 12, "without min_tokens the first end-of-sequence token stops it"
    assert held.completion_tokens >= 12
    assert (forced.reason, forced.completion_tokens) == ("length", 30)


def test_prefill_and_decode_use_no_deprecated_transformers_api(
    model: LlamaForCausalLM, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither warnings (of any category, DeprecationWarning included) nor transformers' deprecation log lines."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    cache = PagedKVCache(
        layers=2, max_batch=4, kv_heads=2, max_len=32, head_dim=16, dtype=torch.float32, device="cpu", num_blocks=3
    )
    runner = ModelRunner(model, cache, use_graphs=False)
    cache.assign(0, [1, 2])
    hf_logging.enable_propagation()
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            logits = runner.prefill([PrefillPart([1, 2], [1, 2, 3, 4], 0, logits=True)])
            runner.input_ids[0, 0] = int(logits[0].argmax())
            runner.positions[0, 0] = 4
            runner.decode(1, 5)
    finally:
        hf_logging.disable_propagation()
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if "deprecat" in r.getMessage().lower()] == []


class OnlyTokens:
    """A stand-in grammar: only `allowed` may be sampled, and it is complete after `length` tokens. With
    `alternate`, the tokens must take turns (the allowed one depends on the token before it, as a real grammar's
    next mask does): a mask filled before the last token was accepted lets a wrong one through."""

    def __init__(self, allowed: list[int], length: int, *, alternate: bool = False) -> None:
        self.allowed, self.length, self.seen, self.alternate = allowed, length, 0, alternate

    def _now(self) -> list[int]:
        return [self.allowed[self.seen % len(self.allowed)]] if self.alternate else self.allowed

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        bitmask[row] = 0
        for token in self._now():
            bitmask[row, token // 32] |= 1 << (token % 32)

    def accept(self, token: int) -> None:
        assert token in self._now(), (token, self.seen)
        self.seen += 1

    @property
    def stopped(self) -> bool:
        return self.seen >= self.length


def test_a_grammar_masks_its_own_row_only(model: LlamaForCausalLM) -> None:
    engine = tiny_engine(model)
    engine.start()
    only: TokenConstraint = OnlyTokens([3, 29, 299], length=9)  # the letter D twice, and the vocabulary's last

    async def run(prompt: list[int], constraint: TokenConstraint | None) -> tuple[str, Finished]:
        request = GenerationRequest(f"g{constraint is None}", prompt, 20, SamplingParams(temperature=0.0))
        request.constraint = constraint
        stream = engine.submit(request, asyncio.get_running_loop())
        text = ""
        while not isinstance(event := await stream.next(), Finished):
            assert isinstance(event, TextDelta), event
            text += event.text
        return text, event

    async def main() -> list[tuple[str, Finished]]:
        return list(await asyncio.gather(run([1, 2, 3, 4, 5], None), run([7, 8, 9], only)))

    try:
        (free, free_end), (constrained, constrained_end) = asyncio.run(main())
    finally:
        engine.stop()
    assert engine.stats.largest_batch == 2, "both rows decoded in the same steps"
    assert free == reference(model, [1, 2, 3, 4, 5], 20) and free_end.reason == "length"
    assert set(constrained) <= {"D", "N"} and len(constrained) == 9  # 299 % 26 == 13: N
    assert (constrained_end.reason, constrained_end.completion_tokens) == ("stop", 9)


def test_a_grammar_sees_each_token_before_its_next_mask_when_steps_run_ahead(model: LlamaForCausalLM) -> None:
    """Steps of unconstrained and constrained rows alike are queued one ahead of the host; a grammar still takes
    step k's token before step k+1's mask is filled, and takes it once."""
    engine = tiny_engine(model)
    engine.start()

    async def run() -> str:
        request = GenerationRequest("alt", [7, 8, 9], 20, SamplingParams(temperature=0.0))
        request.constraint = OnlyTokens([3, 299], length=12, alternate=True)
        stream = engine.submit(request, asyncio.get_running_loop())
        text = ""
        while not isinstance(event := await stream.next(), Finished):
            assert isinstance(event, TextDelta), event
            text += event.text
        assert (event.reason, event.completion_tokens) == ("stop", 12)
        return text

    try:
        text = asyncio.run(run())
    finally:
        engine.stop()
    assert text == "DN" * 6
    assert engine.stats.decode_steps >= 11


def test_a_seed_torch_cannot_take_fails_that_request_not_the_engine(model: LlamaForCausalLM) -> None:
    """Found by bench/security_probe.py: a seed beyond 64 bits crashed the engine loop (the worker then answered
    503 until restarted, and the request hung). The router refuses such a seed (400); the engine must survive it
    too, whoever sends it."""
    engine = tiny_engine(model, queue_size=4)
    engine.start()

    async def run(request: GenerationRequest) -> Finished | Failed:
        stream = engine.submit(request, asyncio.get_running_loop())
        while not isinstance(event := await stream.next(), (Finished, Failed)):
            pass
        return event

    async def main() -> tuple[Finished | Failed, Finished | Failed]:
        bad = GenerationRequest("seed", [1, 2, 3], 5, SamplingParams(temperature=0.7, seed=2**70))
        good = GenerationRequest("after", [1, 2, 3], 5, SamplingParams(temperature=0.0))
        failed = await asyncio.wait_for(run(bad), 30)
        return failed, await asyncio.wait_for(run(good), 30)

    try:
        failed, served = asyncio.run(main())
    finally:
        engine.stop()
    assert isinstance(failed, Failed) and "invalid sampling settings" in str(failed.error)
    assert isinstance(served, Finished) and served.completion_tokens == 5


async def _drain(stream: RequestStream) -> Finished | Failed:
    while not isinstance(event := await stream.next(), Finished | Failed):
        pass
    return event


def test_paged_admission_runs_many_short_requests_where_the_grid_held_two_and_every_block_comes_back(
    model: LlamaForCausalLM,
) -> None:
    """A budget that held 2 rows of max_seq_len (the old grid: 2 x 256 tokens) holds 12 short requests at once;
    their blocks return to the pool whether they finish, stop early (a grammar), are cancelled or fail."""
    grid_rows, max_len, block_size = 2, 256, 8
    num_blocks = grid_rows * max_len // block_size + 1
    failing = "fails-in-prefill"

    def hook(stage: str, ids: list[str]) -> None:
        if stage == "prefill" and failing in ids:
            raise RuntimeError("a fault in prefill")

    engine = tiny_engine(
        model, max_len=max_len, max_batch=16, block_size=block_size, num_blocks=num_blocks, fault_hook=hook
    )
    allocator, ledger = engine.cache.allocator, engine.ledger
    start_free, start_ledger = allocator.free, ledger.snapshot()
    assert (start_free, start_ledger.blocks_free, start_ledger.blocks_total) == (64, 64, 64)

    async def main() -> tuple[list[Finished | Failed], int]:
        loop = asyncio.get_running_loop()
        requests = [
            GenerationRequest(f"s{i}", [1 + i, 2, 3, 4, 5], 11, SamplingParams(temperature=0.0)) for i in range(9)
        ]
        early = GenerationRequest("early", [7, 8, 9], 11, SamplingParams(temperature=0.0))
        early.constraint = OnlyTokens([3], length=2)
        cancelled = GenerationRequest("cancelled", [9, 9, 9], 11, SamplingParams(temperature=0.0))
        failed = GenerationRequest(failing, [4, 4], 11, SamplingParams(temperature=0.0))
        # All twelve queued before the engine starts, so they join at once: 2 blocks each, 24 of the 64.
        streams = [engine.submit(r, loop) for r in [*requests, early, cancelled, failed]]
        assert ledger.snapshot().blocks_free == 64 - 12 * 2
        engine.start()

        async def cancel_mid_decode(stream: RequestStream) -> None:
            for _ in range(3):  # its prefill's token and two decode steps': it is a running row now
                assert isinstance(await stream.next(), TextDelta)
            stream.cancel()

        *ends, _ = await asyncio.gather(
            *(asyncio.wait_for(_drain(s), 60) for s in streams[:-2]),
            asyncio.wait_for(_drain(streams[-1]), 60),
            asyncio.wait_for(cancel_mid_decode(streams[-2]), 60),
        )
        return ends, engine.stats.largest_batch

    try:
        ends, largest = asyncio.run(main())
        # Cancelled: its blocks go back at the next step boundary, once the others are done at the latest.
        for _ in range(100):
            if allocator.free == start_free:
                break
            time.sleep(0.05)
    finally:
        engine.stop()
    assert largest == 11 > grid_rows, "all but the failed one decoded together, far beyond the grid's 2 rows"
    assert [(e.reason, e.completion_tokens) for e in ends[:9] if isinstance(e, Finished)] == [("length", 11)] * 9
    assert isinstance(ends[9], Finished) and (ends[9].reason, ends[9].completion_tokens) == ("stop", 2)
    assert isinstance(ends[10], Failed) and "prefill failed" in str(ends[10].error)
    assert allocator.free == start_free
    assert ledger.snapshot() == start_ledger or (ledger.snapshot().reserved, ledger.snapshot().in_flight) == (0, 0)
    assert ledger.snapshot().blocks_free == start_ledger.blocks_free


def test_a_request_needing_more_blocks_than_the_pool_is_refused_not_left_waiting(model: LlamaForCausalLM) -> None:
    """prompt + max_tokens over max_seq_len: refused as before (the worker answers context_length_exceeded before
    it gets here). Within max_seq_len but over the whole pool: the ledger refuses it at once; and should a ledger
    ever promise more than the pool holds, the engine fails the request instead of waiting for blocks forever."""
    engine = tiny_engine(model, max_len=64, block_size=8, num_blocks=5)  # 4 blocks: 32 tokens
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="exceed 64"):
            engine.submit(GenerationRequest("long", [1] * 40, 30), loop)
        with pytest.raises(VramExhausted) as refused:
            engine.submit(GenerationRequest("big", [1] * 10, 30), loop)  # 40 tokens: 5 blocks
        assert refused.value.needed == 5 * 8 * 512 > refused.value.free
    finally:
        loop.close()

    generous = tiny_engine(model, max_len=64, block_size=8, num_blocks=5, ledger_bytes=10**6)
    generous.start()

    async def main() -> tuple[Finished | Failed, Finished | Failed]:
        loop = asyncio.get_running_loop()
        big = generous.submit(GenerationRequest("big", [1] * 10, 30, SamplingParams(temperature=0.0)), loop)
        fits = generous.submit(GenerationRequest("fits", [1] * 10, 6, SamplingParams(temperature=0.0)), loop)
        return await asyncio.wait_for(_drain(big), 30), await asyncio.wait_for(_drain(fits), 30)

    try:
        big, fits = asyncio.run(main())
    finally:
        generous.stop()
    assert isinstance(big, Failed) and isinstance(big.error, VramExhausted)
    assert isinstance(fits, Finished) and fits.completion_tokens == 6
    assert generous.cache.allocator.free == 4
