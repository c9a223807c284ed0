"""Penalties, logit_bias, logprobs and n inside the batched step, against a hand-computed reference on a tiny model."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import LlamaForCausalLM

from router.wire.decode import parse_chat_request
from router.wire.errors import InvalidRequest
from tests.workers.test_engine import tiny_engine
from workers.engine import Engine, Failed, Finished, GenerationRequest, TextDelta
from workers.processors import TokenLogprob
from workers.sampling import SamplingParams
from workers.service import _logit_bias


def reference(model: LlamaForCausalLM, prompt: list[int], n: int, p: SamplingParams) -> list[tuple[int, torch.Tensor]]:
    """Greedy decoding without a cache, OpenAI's penalties and bias applied by hand: (token, log-softmax) per step."""
    tokens, steps = list(prompt), []
    counts = torch.zeros(model.config.vocab_size)
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([tokens])).logits[0, -1].float()
            logits = logits - p.presence_penalty * (counts > 0).float() - p.frequency_penalty * counts
            for token, value in p.logit_bias.items():
                logits[token] += value
            chosen = int(logits.argmax())
            steps.append((chosen, torch.log_softmax(logits, dim=-1)))
            counts[chosen] += 1
            tokens.append(chosen)
    return steps


def run(engine: Engine, jobs: list[tuple[str, list[int], int, SamplingParams, float]]) -> list[list[TokenLogprob]]:
    """Each job's token log-probabilities, the jobs arriving after their delays and sharing the batch."""

    async def one(rid: str, prompt: list[int], n: int, p: SamplingParams, delay: float) -> list[TokenLogprob]:
        await asyncio.sleep(delay)
        stream = engine.submit(GenerationRequest(rid, prompt, n, p), asyncio.get_running_loop())
        got: list[TokenLogprob] = []
        while True:
            event = await stream.next()
            assert not isinstance(event, Failed), event.error
            if isinstance(event, TextDelta):
                got.extend(event.logprobs)
            if isinstance(event, Finished):
                assert event.completion_tokens == n
                return got

    async def main() -> list[list[TokenLogprob]]:
        return list(await asyncio.gather(*(one(*job) for job in jobs)))

    return asyncio.run(main())


def test_penalties_bias_and_logprobs_match_a_hand_computed_reference_row_by_row(model: LlamaForCausalLM) -> None:
    plain = SamplingParams(temperature=0.0, logprobs=5)
    penalised = SamplingParams(temperature=0.0, presence_penalty=1.5, frequency_penalty=0.7, logprobs=0)
    biased = SamplingParams(temperature=0.0, logit_bias={7: 8.0, 11: -100.0, 250: 3.5}, logprobs=3)
    both = SamplingParams(temperature=0.0, frequency_penalty=2.0, logit_bias={3: 5.0}, logprobs=20)
    forced = SamplingParams(temperature=0.0, logit_bias={42: 100.0}, logprobs=1)
    # Five jobs on four rows, finishing at different steps: rows move when others finish, the fifth joins late.
    jobs = [
        ("plain", [1, 2, 3, 4, 5], 24, plain, 0.0),
        ("penalised", [1, 2, 3, 4, 5], 30, penalised, 0.0),
        ("biased", [9, 8, 7], 12, biased, 0.02),
        ("both", [5] * 9, 20, both, 0.04),
        ("forced", [6, 6], 10, forced, 0.06),
    ]
    engine = tiny_engine(model)
    engine.start()
    try:
        results = run(engine, jobs)
    finally:
        engine.stop()
    for (name, prompt, n, params, _), got in zip(jobs, results, strict=True):
        expected = reference(model, prompt, n, params)
        assert [e.token for e in got] == [token for token, _ in expected], name
        for entry, (token, logp) in zip(got, expected, strict=True):
            assert entry.logprob == pytest.approx(float(logp[token]), abs=1e-4), name
            values, ids = logp.topk(params.logprobs)
            assert [t for t, _ in entry.top] == ids.tolist(), name
            assert [v for _, v in entry.top] == pytest.approx(values.tolist(), abs=1e-4), name
    tokens = {name: [e.token for e in got] for (name, *_), got in zip(jobs, results, strict=True)}
    assert tokens["penalised"][:24] != tokens["plain"], "the penalties changed the greedy choice"
    assert len(set(tokens["penalised"])) > len(set(tokens["plain"]))
    assert 11 not in tokens["biased"] and tokens["forced"] == [42] * 10
    assert engine.ledger.snapshot().reserved == 0


def test_n_seeded_sequences_in_one_batch_equal_separate_seeded_runs(model: LlamaForCausalLM) -> None:
    def params(seed: int) -> SamplingParams:
        return SamplingParams(temperature=1.0, seed=seed, presence_penalty=0.5, logprobs=0)

    prompt = [3, 1, 4, 1, 5]
    engine = tiny_engine(model)
    engine.start()
    try:
        together = run(engine, [(f"c{i}", prompt, 16, params(10 + i), 0.0) for i in range(3)])
        alone = [run(engine, [(f"s{i}", prompt, 16, params(10 + i), 0.0)])[0] for i in range(3)]
    finally:
        engine.stop()
    sequences = [[e.token for e in got] for got in together]
    assert sequences == [[e.token for e in got] for got in alone]
    assert len({tuple(s) for s in sequences}) == 3, "each choice is its own sequence"


def test_request_validation_names_the_parameter() -> None:
    def param(body: bytes) -> str | None:
        with pytest.raises(InvalidRequest) as caught:
            parse_chat_request(body)
        return caught.value.param

    messages = b'"messages": [{"role": "user", "content": "hi"}]'
    assert param(b"{" + messages + b', "n": 5}') == "n"
    assert param(b"{" + messages + b', "top_logprobs": 2}') == "top_logprobs"
    assert param(b"{" + messages + b', "logprobs": true, "top_logprobs": 21}') == "top_logprobs"
    assert parse_chat_request(b"{" + messages + b', "n": 4, "logprobs": true, "top_logprobs": 20}').choices() == 4

    assert _logit_bias(b'{"5": 250, "7": -101.5, "9": 0.5}', 300) == {5: 100.0, 7: -100.0, 9: 0.5}
    for bad in (b'{"300": 1}', b'{"-1": 1}', b'{"a": 1}', b'{"5": "x"}', b"[1]"):
        with pytest.raises(InvalidRequest) as caught:
            _logit_bias(bad, 300)
        assert caught.value.param == "logit_bias"
