"""The worker over HTTP: real tiny checkpoints, the real engine on the CPU, a simulated GPU where needed."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import msgspec
import openai
import pytest
import torch

from tests.helpers import GB, WorkerFactory
from tests.servers import ServerThread
from workers.memory import SimulatedGpu

HELLO = [{"role": "user", "content": "What is the capital of France?"}]


def ready(server: ServerThread) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/ready").json()
    return body


def memory(server: ServerThread) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/v1/memory", timeout=30).json()
    return body


def test_chat_stream_usage_with_the_openai_sdk(start_worker: WorkerFactory) -> None:
    worker = start_worker("small")
    client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(model="small", messages=HELLO, max_tokens=12, temperature=0)
    usage = completion.usage
    assert usage is not None and usage.completion_tokens <= 12
    assert usage.prompt_tokens > len(["What", "is", "the", "capital", "of", "France?"])  # the chat template adds tokens
    assert completion.choices[0].finish_reason in ("stop", "length")

    stream = client.chat.completions.create(
        model="small", messages=HELLO, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == completion.choices[0].message.content, "greedy: the stream says what the completion said"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == usage.completion_tokens
    models = client.models.list()
    assert [m.id for m in models.data] == ["small"]


def test_concurrent_requests_share_decode_steps_and_match_solo_runs(start_worker: WorkerFactory) -> None:
    worker = start_worker("small")
    prompts = [f"Tell me fact number {i} about the sea." for i in range(6)]

    async def ask(client: httpx.AsyncClient, prompt: str) -> str:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 0}
        response = await client.post(f"{worker.url}/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        text: str = response.json()["choices"][0]["message"]["content"]
        return text

    async def solo() -> list[str]:
        async with httpx.AsyncClient() as client:
            return [await ask(client, p) for p in prompts]

    async def together() -> list[str]:
        async with httpx.AsyncClient() as client:
            return list(await asyncio.gather(*(ask(client, p) for p in prompts)))

    alone = asyncio.run(solo())
    steps_before = ready(worker)["engine"]["decode_steps"]
    batched = asyncio.run(together())
    engine = ready(worker)["engine"]
    assert batched == alone, "batching must not change what greedy decoding produces"
    assert engine["largest_batch"] > 1
    steps = engine["decode_steps"] - steps_before
    assert steps < sum(24 for _ in prompts), "requests shared decode steps"
    assert memory(worker)["reserved"] == 0


def test_full_queue_answers_503_with_retry_after(start_worker: WorkerFactory) -> None:
    gate = threading.Event()

    def hold(phase: str, ids: list[str]) -> None:
        if phase == "decode":
            gate.wait(timeout=120)

    worker = start_worker("small", fault_hook=hold, max_batch_size=1, queue_size=1)
    body = {"messages": HELLO, "max_tokens": 8}
    results: list[httpx.Response] = []

    def send() -> None:
        results.append(httpx.post(f"{worker.url}/v1/chat/completions", json=body, timeout=60))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120  # a bound on the wait, not a speed target: a loaded 2-core CI machine is slow
    while memory(worker)["queue_depth"] < 1 or memory(worker)["running"] < 1:
        assert time.monotonic() < deadline, memory(worker)
        time.sleep(0.02)
    refused = httpx.post(f"{worker.url}/v1/chat/completions", json=body, timeout=60)
    gate.set()
    for thread in threads:
        thread.join(timeout=60)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "queue_full"
    assert [r.status_code for r in results] == [200, 200]


def test_ledger_admission_under_a_simulated_8gb_gpu(start_worker: WorkerFactory) -> None:
    gpu = SimulatedGpu(8 * GB)
    # The tiny random-weight model: this checks the ledger's arithmetic under a burst of 12 x 200 tokens, which the
    # real model would take minutes to decode on a loaded 2-core machine.
    worker = start_worker(
        "small",
        model="demo:small",
        probe=gpu,
        max_batch_size=4,
        max_seq_len=256,
        max_tokens_cap=200,
        vram={"safety_margin_bytes": 0},
    )
    state = memory(worker)
    assert state["device"] == "simulated" and state["total"] == 8 * GB
    per_token = state["kv_bytes_per_token"]
    assert state["budget"] == 4 * 256 * per_token  # the cache pool is what a tiny model can use

    # Another process takes almost all the device: a big request no longer fits, a small one still does.
    gpu.external_bytes = gpu.free_bytes() - 100 * per_token
    too_big = httpx.post(f"{worker.url}/v1/chat/completions", json={"messages": HELLO, "max_tokens": 150}, timeout=60)
    assert too_big.status_code == 503
    error = too_big.json()["error"]
    assert error["code"] == "vram_exhausted"
    assert error["needed_bytes"] > error["free_bytes"] >= 0
    small = httpx.post(f"{worker.url}/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4}, timeout=60)
    assert small.status_code == 200
    gpu.external_bytes = 0

    # Under concurrent load, reservations never exceed the budget; the excess is refused, not queued.
    peak, over, stop = [0], [], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            snapshot = memory(worker)
            if snapshot["reserved"] > snapshot["budget"]:
                over.append(snapshot)
            peak[0] = max(peak[0], snapshot["reserved"])

    watcher = threading.Thread(target=watch)
    watcher.start()

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as client:
            body = {"messages": HELLO, "max_tokens": 200}
            responses = await asyncio.gather(
                *(client.post(f"{worker.url}/v1/chat/completions", json=body) for _ in range(12))
            )
        for response in responses:
            if response.status_code == 503:
                assert response.json()["error"]["code"] == "vram_exhausted"
        return [r.status_code for r in responses]

    statuses = asyncio.run(burst())
    stop.set()
    watcher.join()
    assert not over, over
    assert set(statuses) == {200, 503}
    final = memory(worker)
    assert final["reserved"] == 0 and final["in_flight"] == 0
    assert peak[0] > 0


def test_a_budget_of_two_full_rows_runs_eight_short_chats_at_once_and_gets_its_blocks_back(
    start_worker: WorkerFactory,
) -> None:
    """The paged cache: memory that held 2 sequences of max_seq_len (the old grid's 2 rows) holds 8 short chats
    decoding together; /v1/memory counts blocks, and every block is free again afterwards."""
    sizing = start_worker("small", model="demo:small", probe=SimulatedGpu(8 * GB), max_seq_len=256, max_tokens_cap=200)
    state = memory(sizing)
    fixed, per_token, block = state["fixed"], state["kv_bytes_per_token"], state["block_size"]
    assert block == 16
    # A device whose budget (half of it) is the weights and 2 x 256 tokens of KV cache (and the scratch block).
    gpu = SimulatedGpu(2 * (fixed + (2 * 256 + block) * per_token))
    gate = threading.Event()

    def hold(phase: str, ids: list[str]) -> None:
        if phase == "decode":
            gate.wait(timeout=120)  # the first step waits until every request has arrived

    worker = start_worker(
        "small",
        model="demo:small",
        probe=gpu,
        fault_hook=hold,
        max_seq_len=256,
        max_tokens_cap=200,
        max_batch_size=16,
        vram={"budget_fraction": 0.5, "safety_margin_bytes": 0},
    )
    start = memory(worker)
    assert start["budget"] == 2 * 256 * per_token
    assert (start["blocks_total"], start["blocks_free"]) == (32, 32)
    body = {"messages": HELLO, "max_tokens": 16, "ignore_eos": True}  # ~30 prompt tokens + 16: 3 blocks each

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            sent = [asyncio.create_task(client.post(f"{worker.url}/v1/chat/completions", json=body)) for _ in range(8)]
            deadline = time.monotonic() + 120  # a bound on the wait, not a speed target
            while (now := memory(worker))["running"] + now["queue_depth"] < 8:
                assert time.monotonic() < deadline, now
                await asyncio.sleep(0.05)
            assert now["blocks_free"] == 32 - 8 * 3, "each reserved its own blocks, not a 256-token row"
            gate.set()
            return list(await asyncio.gather(*sent))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 8
    assert all(r.json()["usage"]["completion_tokens"] == 16 for r in responses)
    assert ready(worker)["engine"]["largest_batch"] == 8, "all eight decoded together, not two at a time"
    end = memory(worker)
    assert (end["blocks_free"], end["reserved"], end["in_flight"]) == (32, 0, 0)


def test_out_of_memory_is_confined_to_one_request(start_worker: WorkerFactory) -> None:
    calls = {"prefill": 0, "decode": 0}
    pacing, armed = threading.Event(), threading.Event()

    def oom(phase: str, ids: list[str]) -> None:
        calls[phase] += 1
        if phase == "prefill" and calls["prefill"] == 2:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory during prefill")
        if phase == "decode" and pacing.is_set() and len(ids) < 2:
            time.sleep(0.01)  # keep the older request running until the streamed one has joined
        if phase == "decode" and armed.is_set() and len(ids) >= 2:
            armed.clear()
            raise torch.OutOfMemoryError("simulated: CUDA out of memory during decode")

    worker = start_worker("small", fault_hook=oom)
    margin = memory(worker)["margin"]
    url = f"{worker.url}/v1/chat/completions"
    first = httpx.post(url, json={"messages": HELLO, "max_tokens": 4}, timeout=60)
    assert first.status_code == 200
    refused = httpx.post(url, json={"messages": HELLO, "max_tokens": 4})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "vram_exhausted"
    assert memory(worker)["margin"] > margin, "the safety margin widens after an out-of-memory error"

    # Mid-stream: the newest request of the batch gets an error event; the other finishes normally.
    older_done: list[dict[str, Any]] = []

    def older() -> None:
        body = {"messages": HELLO, "max_tokens": 200, "temperature": 0, "ignore_eos": True}
        older_done.append(httpx.post(url, json=body, timeout=60).json())

    pacing.set()
    thread = threading.Thread(target=older)
    thread.start()
    while memory(worker)["running"] < 1:
        time.sleep(0.01)
    body = {"messages": HELLO, "max_tokens": 40, "ignore_eos": True, "stream": True}
    lines: list[str] = []
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                lines.append(line)
            if '"content":"' in line and '"content":""' not in line:
                armed.set()  # tokens were sent: the out-of-memory error now strikes mid-stream
    pacing.clear()
    thread.join(timeout=60)
    assert '"code":"vram_exhausted"' in lines[-2] and lines[-1] == "data: [DONE]"
    assert older_done[0]["choices"][0]["finish_reason"] in ("stop", "length")
    assert memory(worker)["reserved"] == 0
    assert httpx.post(url, json={"messages": HELLO, "max_tokens": 4}).status_code == 200


def test_client_disconnect_cancels_and_releases(start_worker: WorkerFactory) -> None:
    gate, steps = threading.Event(), [0]

    def slow_after_three(phase: str, ids: list[str]) -> None:
        if phase == "decode":
            steps[0] += 1
            if steps[0] > 3:
                gate.wait(timeout=120)

    worker = start_worker("small", max_tokens_cap=500, fault_hook=slow_after_three)
    body = {"messages": HELLO, "max_tokens": 500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{worker.url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if '"content"' in line and '"role"' not in line:
                assert memory(worker)["in_flight"] == 1
                break  # leaving the iterator closes the connection: the client is gone
    gate.set()
    deadline = time.monotonic() + 10
    while memory(worker)["in_flight"] != 0:
        assert time.monotonic() < deadline, "the reservation was not released after the client left"
        time.sleep(0.02)
    assert memory(worker)["running"] == 0
    assert ready(worker)["engine"]["decode_tokens"] < 100, "generation stopped instead of running to max_tokens"


def test_bad_input_and_not_ready(start_worker: WorkerFactory) -> None:
    worker = start_worker("small", max_tokens_default=8, max_tokens_cap=16)
    bad = httpx.post(f"{worker.url}/v1/chat/completions", content=b'{"messages": 3}')
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    huge = "word " * 3000
    too_long = httpx.post(f"{worker.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": huge}]})
    assert too_long.status_code == 400 and "at most" in too_long.json()["error"]["message"]
    capped = httpx.post(
        f"{worker.url}/v1/chat/completions", json={"messages": HELLO, "max_tokens": 100_000}, timeout=60
    )
    assert capped.status_code == 200 and capped.json()["usage"]["completion_tokens"] <= 16

    loading = start_worker("small", wait_ready=False, model="demo:does-not-exist")
    deadline = time.monotonic() + 30
    while "failed" not in httpx.get(f"{loading.url}/ready").json()["detail"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    response = httpx.post(f"{loading.url}/v1/chat/completions", json={"messages": HELLO})
    assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
    assert httpx.get(f"{loading.url}/health").status_code == 200


@pytest.mark.slow
def test_nf4_large_worker_through_the_real_loader(start_worker: WorkerFactory) -> None:
    worker = start_worker("large")
    response = httpx.post(f"{worker.url}/v1/chat/completions", json={"messages": HELLO, "max_tokens": 6}, timeout=120)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] >= 1


def test_worker_metrics_show_memory_queue_batch_and_throughput(start_worker: WorkerFactory) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    worker = start_worker("small", probe=SimulatedGpu(8 * GB), max_batch_size=4, max_seq_len=256, max_tokens_cap=200)
    body = {"messages": HELLO, "max_tokens": 16, "ignore_eos": True}  # the real model may stop earlier
    response = httpx.post(f"{worker.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    scraped = httpx.get(f"{worker.url}/metrics").text
    samples = {s.name: s.value for f in text_string_to_metric_families(scraped) for s in f.samples}
    assert samples["tiered_worker_ready"] == 1
    assert samples["tiered_worker_vram_total_bytes"] == 8 * GB
    assert 0 < samples["tiered_worker_vram_free_bytes"] <= samples["tiered_worker_vram_budget_bytes"]
    assert samples["tiered_worker_vram_reserved_bytes"] == 0
    assert samples["tiered_worker_queue_depth"] == 0 and samples["tiered_worker_batch_size"] == 0
    assert samples["tiered_worker_decode_tokens_total"] >= 15
    blocks = memory(worker)
    assert samples["tiered_worker_kv_block_size_tokens"] == blocks["block_size"] == 16
    assert samples["tiered_worker_kv_blocks_total"] == blocks["blocks_total"] == 4 * 256 // 16
    assert samples["tiered_worker_kv_blocks_free"] == blocks["blocks_free"] == blocks["blocks_total"]
    assert "tiered_worker_decode_tokens_per_second" in samples


def test_continue_final_message_continues_the_assistant_text(start_worker: WorkerFactory) -> None:
    """vLLM's `continue_final_message`: the prompt ends in the partial answer, not in a new assistant turn."""
    worker = start_worker("small")
    partial = [*HELLO, {"role": "assistant", "content": "The capital of France is"}]
    url = f"{worker.url}/v1/chat/completions"
    fresh = httpx.post(url, json={"messages": partial, "max_tokens": 4}).json()
    continued = httpx.post(url, json={"messages": partial, "max_tokens": 4, "continue_final_message": True}).json()
    assert continued["choices"][0]["finish_reason"] in ("length", "stop")
    # The fresh turn adds the end of the assistant's turn and a new assistant header; continuing does not.
    assert continued["usage"]["prompt_tokens"] < fresh["usage"]["prompt_tokens"]
    service = _service(worker)
    from router.wire.protocol import decode_chat_request

    body = msgspec.json.encode({"messages": partial, "continue_final_message": True})
    prompt = service.generation_request(decode_chat_request(body)).prompt
    assert service.tokenizer.decode(prompt).rstrip().endswith("The capital of France is")
    wrong = httpx.post(url, json={"messages": HELLO, "continue_final_message": True})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "messages"


def _service(worker: ServerThread) -> Any:
    """The WorkerService behind a served worker app (through its `worker` dependency)."""
    return worker.server.config.app.dependencies["worker"].dependency().service
