"""Packed, chunked prefill interleaved with decode steps: which chunks a forward takes, that a packed forward
computes what separate ones would, that greedy answers still equal `generate`, and that running streams keep
decoding while a long prompt goes in (the order of forwards and steps, seen through the fault hook)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.workers.test_engine import reference, tiny_engine
from workers.engine import Engine, Failed, Finished, GenerationRequest, RequestStream, TextDelta
from workers.kv_cache import PagedKVCache, blocks_for
from workers.ledger import VramExhausted
from workers.prefill import PrefillQueue
from workers.runner import ModelRunner, PrefillPart
from workers.sampling import SamplingParams

# --- which chunks a forward takes ----------------------------------------------------------------------------


def test_a_forward_takes_the_oldest_prompts_first_within_the_budget_and_long_ones_go_on_from_their_offset() -> None:
    queue: PrefillQueue[str] = PrefillQueue(budget=10)
    queue.add("long", list(range(23)), [1, 2, 3])
    queue.add("short", [7, 8, 9], [4])
    queue.add("later", [5, 5], [5])
    assert queue.backlog == 28

    first = queue.next_forward()
    assert [(j.owner, p.offset, len(p.tokens), p.logits) for j, p in first] == [("long", 0, 10, False)]
    assert queue.advance(first) == [] and queue.backlog == 18

    second = queue.next_forward()
    assert [(j.owner, p.offset, list(p.tokens)) for j, p in second] == [("long", 10, list(range(10, 20)))]
    queue.advance(second)

    # The long prompt's last 3 tokens, then the next prompts packed behind them in the same forward.
    third = queue.next_forward()
    assert [(j.owner, p.offset, len(p.tokens), p.logits) for j, p in third] == [
        ("long", 20, 3, True),
        ("short", 0, 3, True),
        ("later", 0, 2, True),
    ]
    assert sum(len(p.tokens) for _, p in third) == 8 <= queue.budget
    assert [j.owner for j in queue.advance(third)] == ["long", "short", "later"]
    assert len(queue) == 0 and queue.backlog == 0 and queue.next_forward() == []


def test_a_prompt_cut_by_the_budget_ends_a_forward_and_removing_one_takes_its_rest_off_the_backlog() -> None:
    queue: PrefillQueue[str] = PrefillQueue(budget=4)
    a = queue.add("a", [1, 2, 3], [1])
    queue.add("b", [4, 5, 6], [2])
    forward = queue.next_forward()
    assert [(j.owner, len(p.tokens), p.logits) for j, p in forward] == [("a", 3, True), ("b", 1, False)]
    assert [j.owner for j in queue.advance(forward)] == ["a"] and a.remaining == 0
    (b,) = list(queue)
    assert (b.done, queue.backlog) == (1, 2)
    queue.remove(b)
    assert (len(queue), queue.backlog) == (0, 0)
    with pytest.raises(ValueError, match="empty prompt"):
        queue.add("empty", [], [3])
    with pytest.raises(ValueError, match="budget"):
        PrefillQueue(budget=0)


# --- one packed forward against separate ones ------------------------------------------------------------------


def test_a_forward_may_be_given_a_larger_budget_than_the_queue_s() -> None:
    queue: PrefillQueue[str] = PrefillQueue(budget=4)
    queue.add("long", list(range(10)), [0, 1])
    assert [len(p.tokens) for _, p in queue.next_forward()] == [4]
    assert [len(p.tokens) for _, p in queue.next_forward(budget=16)] == [10]
    with pytest.raises(ValueError, match="at least one token"):
        queue.next_forward(budget=0)


def test_a_packed_forward_gives_each_prompt_the_logits_of_its_own_full_forward(model: LlamaForCausalLM) -> None:
    """Three prompts in one forward, one of them continuing from a chunk already in the cache, with blocks of 3
    (lengths and offsets cross block boundaries): each prompt's last logits equal a plain forward over it alone,
    and the keys/values written let a decode step go on exactly."""
    block_size = 3
    cache = PagedKVCache(
        layers=2,
        max_batch=4,
        kv_heads=2,
        max_len=48,
        head_dim=16,
        dtype=torch.float32,
        device="cpu",
        num_blocks=40,
        block_size=block_size,
    )
    runner = ModelRunner(model, cache, use_graphs=False)
    long, short, other = list(range(1, 21)), [40, 41, 42, 43, 44], [9, 8, 7, 6, 5, 4, 3]
    blocks = {
        name: cache.allocator.allocate(blocks_for(len(prompt) + 4, block_size))
        for name, prompt in (("long", long), ("short", short), ("other", other))
    }
    with torch.inference_mode():
        expected = [model(torch.tensor([p])).logits[0, -1] for p in (long, short, other)]
        head = runner.prefill([PrefillPart(blocks["long"], long[:11], 0, logits=False)])
        assert head.shape == (0, model.config.vocab_size), "no prompt ended: no logits computed"
        packed = runner.prefill(
            [
                PrefillPart(blocks["short"], short, 0, logits=True),
                PrefillPart(blocks["long"], long[11:], 11, logits=True),
                PrefillPart(blocks["other"], other[:4], 0, logits=False),
            ]
        )
        assert packed.shape == (2, model.config.vocab_size)
        torch.testing.assert_close(packed[0], expected[1], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(packed[1], expected[0], rtol=1e-4, atol=1e-4)
        (rest,) = runner.prefill([PrefillPart(blocks["other"], other[4:], 4, logits=True)])
        torch.testing.assert_close(rest, expected[2], rtol=1e-4, atol=1e-4)

        # A decode step over the three rows reads back what the packed forwards wrote.
        for row, name in enumerate(("long", "short", "other")):
            cache.assign(row, blocks[name])
        prompts = (long, short, other)
        nexts = [int(logits.argmax()) for logits in (packed[1], packed[0], rest)]
        for row, (prompt, token) in enumerate(zip(prompts, nexts, strict=True)):
            runner.input_ids[row, 0], runner.positions[row, 0] = token, len(prompt)
        stepped = runner.decode(3, max(len(p) for p in prompts) + 1)
        for row, (prompt, token) in enumerate(zip(prompts, nexts, strict=True)):
            full = model(torch.tensor([[*prompt, token]])).logits[0, -1]
            torch.testing.assert_close(stepped[row], full, rtol=1e-4, atol=1e-4)


# --- the engine: answers, interleaving, every block back -------------------------------------------------------


class Recorder:
    """The fault hook as a log of forwards and steps, in the engine's order; `at_step` runs an action before the
    n-th decode step (from the engine thread: `Engine.submit` is thread-safe, a stream's cancel is a flag)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, list[str]]] = []
        self.at_step: dict[int, list[Callable[[], object]]] = {}
        self.at_prefill: dict[tuple[str, int], Callable[[], object]] = {}
        self.steps = 0

    def __call__(self, stage: str, ids: list[str]) -> None:
        self.events.append((stage, list(ids)))
        if stage == "decode":
            self.steps += 1
            for action in self.at_step.pop(self.steps, []):
                action()
        else:
            for rid in ids:
                seen = sum(1 for s, i in self.events if s == "prefill" and rid in i)
                action = self.at_prefill.pop((rid, seen), None)
                if action is not None:
                    action()

    def prefills_of(self, rid: str) -> list[int]:
        """Indices into `events` of the prefill forwards that took a chunk of `rid`."""
        return [i for i, (stage, ids) in enumerate(self.events) if stage == "prefill" and rid in ids]

    def decodes_of(self, rid: str) -> list[int]:
        return [i for i, (stage, ids) in enumerate(self.events) if stage == "decode" and rid in ids]


async def _collect(stream: RequestStream) -> tuple[str, Finished | Failed]:
    text = ""
    while True:
        event = await asyncio.wait_for(stream.next(), 60)
        if isinstance(event, TextDelta):
            text += event.text
        else:
            return text, event


def _greedy(rid: str, prompt: list[int], n: int) -> GenerationRequest:
    return GenerationRequest(rid, prompt, n, SamplingParams(temperature=0.0))


def _run(
    engine: Engine, first: list[GenerationRequest], later: dict[int, list[GenerationRequest]], recorder: Recorder
) -> dict[str, tuple[str, Finished | Failed]]:
    """`first` queued before the engine starts (so they pack into its first forward), `later[k]` submitted just
    before decode step k; every stream collected to its end."""
    streams: dict[str, RequestStream] = {}

    async def main() -> dict[str, tuple[str, Finished | Failed]]:
        loop = asyncio.get_running_loop()
        total = len(first) + sum(len(r) for r in later.values())
        all_in = asyncio.Event()

        def submit(request: GenerationRequest) -> None:
            streams[request.id] = engine.submit(request, loop)
            if len(streams) == total:
                loop.call_soon_threadsafe(all_in.set)

        for request in first:
            submit(request)
        for step, requests in later.items():
            recorder.at_step[step] = [(lambda r=r: submit(r)) for r in requests]
        engine.start()
        await asyncio.wait_for(all_in.wait(), 60)
        ends = await asyncio.gather(*(_collect(s) for s in streams.values()))
        return dict(zip(streams, ends, strict=True))

    try:
        return asyncio.run(main())
    finally:
        engine.stop()


@pytest.mark.parametrize(("budget", "block_size", "padded"), [(16, 5, False), (7, 3, True), (512, 8, False)])
def test_greedy_answers_equal_generate_with_packed_chunked_interleaved_prefill(
    model: LlamaForCausalLM, budget: int, block_size: int, padded: bool
) -> None:
    """Prompts longer than the budget, several packed into one forward, joins at fixed decode steps while others
    decode, block sizes that divide neither lengths nor the budget: every answer equals `generate`'s, and every
    block and reservation comes back."""
    recorder = Recorder()
    engine = tiny_engine(
        model,
        max_len=128,
        prefill_chunk=budget,
        block_size=block_size,
        padded=padded,
        max_batch=4,
        fault_hook=recorder,
    )
    free, reserved = engine.cache.allocator.free, engine.ledger.snapshot().reserved
    prompts = {
        "a": ([1, 2, 3, 4, 5], 20),
        "b": (list(range(30, 70)), 12),  # 40 tokens: over the budget when it is 16 or 7
        "c": ([7, 8, 9], 25),
        "d": (list(range(100, 133)), 10),  # joins mid-decode, several forwards long
        "e": ([50, 60], 18),
        "f": ([5] * 12, 15),
        "g": (list(range(200, 223)), 8),  # waits for a batch slot (max_batch 4)
    }
    requests = {rid: _greedy(rid, prompt, n) for rid, (prompt, n) in prompts.items()}
    first = [requests[r] for r in "abc"]
    later = {2: [requests["d"], requests["e"]], 5: [requests["f"], requests["g"]]}
    results = _run(engine, first, later, recorder)

    for rid, (prompt, n) in prompts.items():
        text, end = results[rid]
        assert isinstance(end, Finished), (rid, end)
        assert (text, end.reason, end.completion_tokens) == (reference(model, prompt, n), "length", n), rid
    assert len(recorder.events[0][1]) > 1, "the requests queued before the start shared the first forward"
    if budget < 40:
        assert len(recorder.prefills_of("b")) > 1 and len(recorder.prefills_of("d")) > 1, "longer than the budget"
    assert engine.stats.prefill_tokens == sum(len(p) for p, _ in prompts.values()), "every prompt token once"
    assert engine.cache.allocator.free == free and engine.ledger.snapshot().reserved == reserved == 0


def test_a_running_stream_gets_a_token_between_every_two_forwards_of_a_long_prompt(model: LlamaForCausalLM) -> None:
    """Two requests decode; a 90-token prompt joins with a budget of 8 tokens a forward: it takes 12 forwards, and
    each is followed by one decode step of the running rows; the long one decodes only once all of it is in. The
    short one ends meanwhile, so the rows are compacted while the long prompt is half prefilled."""
    recorder = Recorder()
    engine = tiny_engine(model, max_len=160, prefill_chunk=8, block_size=5, max_batch=4, fault_hook=recorder)
    free = engine.cache.allocator.free
    short, running = _greedy("short", [3, 1, 4], 6), _greedy("running", [2, 7, 1, 8], 40)
    long = _greedy("long", [(i * 7) % 290 for i in range(90)], 10)
    results = _run(engine, [short, running], {2: [long]}, recorder)

    for request in (short, running, long):
        text, end = results[request.id]
        assert isinstance(end, Finished) and text == reference(model, list(request.prompt), request.max_tokens)
    forwards = recorder.prefills_of("long")
    assert len(forwards) == -(-90 // 8) == 12
    running_steps = recorder.decodes_of("running")
    for before, after in itertools.pairwise(forwards):
        between = [i for i in running_steps if before < i < after]
        assert len(between) == 1, f"one decode step between two forwards, got {recorder.events[before : after + 1]}"
    assert recorder.decodes_of("short")[-1] < forwards[-1], "the short one ended while the long one was prefilled"
    assert recorder.decodes_of("long")[0] > forwards[-1], "no decode step for a prompt not yet complete"
    assert engine.stats.largest_batch == 2
    assert engine.cache.allocator.free == free


def test_a_request_cancelled_mid_prefill_gives_its_blocks_back_and_never_decodes(model: LlamaForCausalLM) -> None:
    recorder = Recorder()
    engine = tiny_engine(model, max_len=128, prefill_chunk=8, block_size=4, fault_hook=recorder)
    free, reserved = engine.cache.allocator.free, engine.ledger.snapshot().reserved
    running = _greedy("running", [5, 6, 7], 30)
    doomed = _greedy("doomed", list(range(60)), 10)
    streams: dict[str, RequestStream] = {}

    async def main() -> tuple[str, Finished | Failed]:
        loop = asyncio.get_running_loop()
        streams["running"] = engine.submit(running, loop)
        streams["doomed"] = engine.submit(doomed, loop)
        recorder.at_prefill[("doomed", 3)] = streams["doomed"].cancel  # during its third forward of eight
        engine.start()
        return await _collect(streams["running"])

    try:
        text, end = asyncio.run(main())
        for _ in range(100):  # released at the next forward's start, which may come after the running one ends
            if engine.cache.allocator.free == free:
                break
            time.sleep(0.02)
    finally:
        engine.stop()
    assert isinstance(end, Finished) and text == reference(model, [5, 6, 7], 30)
    assert len(recorder.prefills_of("doomed")) == 3 and recorder.decodes_of("doomed") == []
    assert engine.cache.allocator.free == free and engine.ledger.snapshot().reserved == reserved == 0


def test_out_of_memory_in_a_packed_forward_refuses_only_the_request_that_causes_it(model: LlamaForCausalLM) -> None:
    """The packed forward fails; each prompt is tried alone; only the one that fails alone is refused, the others
    are answered as `generate` answers them, the margin widens and every block comes back."""

    def hook(stage: str, ids: list[str]) -> None:
        recorder(stage, ids)
        if stage == "prefill" and "greedy-for-memory" in ids:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory during prefill")

    recorder = Recorder()
    engine = tiny_engine(model, max_len=96, prefill_chunk=64, block_size=8, fault_hook=hook)
    free, margin = engine.cache.allocator.free, engine.ledger.snapshot().margin
    prompts = {"x": [1, 2, 3], "greedy-for-memory": [4] * 20, "y": list(range(10, 30))}
    results = _run(engine, [_greedy(r, p, 8) for r, p in prompts.items()], {}, recorder)

    assert recorder.events[0] == ("prefill", ["x", "greedy-for-memory", "y"])
    assert [ids for stage, ids in recorder.events[1:4]] == [["x"], ["greedy-for-memory"], ["y"]]
    victim = results["greedy-for-memory"][1]
    assert isinstance(victim, Failed) and isinstance(victim.error, VramExhausted)
    for rid in ("x", "y"):
        text, end = results[rid]
        assert isinstance(end, Finished) and text == reference(model, prompts[rid], 8)
    assert engine.ledger.snapshot().margin > margin
    assert engine.cache.allocator.free == free and engine.ledger.snapshot().reserved == 0


def test_an_idle_worker_prefills_a_long_prompt_in_larger_forwards_and_a_busy_one_in_chunks(
    model: LlamaForCausalLM,
) -> None:
    """`prefill_chunk_idle`: a 90-token prompt at an idle engine takes forwards of 64 tokens (2, not 12 of 8); the
    same prompt joining while another request decodes takes forwards of 8, one decode step between two. Both answers
    equal `generate`'s."""
    recorder = Recorder()
    engine = tiny_engine(model, max_len=160, prefill_chunk=8, prefill_chunk_idle=64, block_size=5, fault_hook=recorder)
    free = engine.cache.allocator.free
    alone = _greedy("alone", [(i * 7) % 290 for i in range(90)], 6)
    results = _run(engine, [alone], {}, recorder)
    assert len(recorder.prefills_of("alone")) == 2, recorder.events

    recorder = Recorder()
    engine = tiny_engine(model, max_len=160, prefill_chunk=8, prefill_chunk_idle=64, block_size=5, fault_hook=recorder)
    running = _greedy("running", [2, 7, 1, 8], 30)
    busy = _greedy("busy", [(i * 7) % 290 for i in range(90)], 6)
    results |= _run(engine, [running], {2: [busy]}, recorder)
    forwards = recorder.prefills_of("busy")
    assert len(forwards) == -(-90 // 8), "others decode: forwards of prefill_chunk"
    for before, after in itertools.pairwise(forwards):
        assert len([i for i in recorder.decodes_of("running") if before < i < after]) == 1

    for request in (alone, running, busy):
        text, end = results[request.id]
        assert isinstance(end, Finished) and text == reference(model, list(request.prompt), request.max_tokens)
    assert engine.cache.allocator.free == free


def test_out_of_memory_in_an_idle_sized_forward_falls_back_to_chunks_and_refuses_nobody(
    model: LlamaForCausalLM,
) -> None:
    """The larger forward runs out of memory: the prompt goes on in forwards of `prefill_chunk`, from where it
    was (nothing advanced), the answer still equals `generate`'s, and the engine stays at prefill_chunk."""
    failed: list[int] = []

    def hook(stage: str, ids: list[str]) -> None:
        recorder(stage, ids)
        if stage == "prefill" and not failed:
            failed.append(len(recorder.events))
            raise torch.OutOfMemoryError("simulated: CUDA out of memory in a large prefill forward")

    recorder = Recorder()
    engine = tiny_engine(model, max_len=160, prefill_chunk=8, prefill_chunk_idle=64, block_size=5, fault_hook=hook)
    free, reserved = engine.cache.allocator.free, engine.ledger.snapshot().reserved
    first = _greedy("first", [(i * 5) % 290 for i in range(40)], 6)
    results = _run(engine, [first], {}, recorder)
    text, end = results["first"]
    assert isinstance(end, Finished) and text == reference(model, list(first.prompt), 6)
    assert len(recorder.prefills_of("first")) == 1 + 40 // 8, "the failed forward, then five of 8 tokens"
    assert engine.stats.prefill_tokens == 40, "the failed forward counted nothing"

    assert engine._idle_budget == engine.prefill_budget == 8, "later idle forwards stay at prefill_chunk"
    assert engine.cache.allocator.free == free and engine.ledger.snapshot().reserved == reserved == 0
