"""The generation engine: one thread that batches every running request into shared decode steps.

Requests are admitted (VRAM reserved, queue bounded) on the event loop, then join at a step boundary: they
get the cache blocks their prompt and max_tokens need and a batch slot, and their prompt is prefilled into
those blocks (workers.prefill). Each iteration of the engine runs at most one prefill forward, several
prompts' chunks packed into `prefill_chunk` tokens (`prefill_chunk_idle` while nothing decodes: nobody to hold
up), then one decode step of the running requests; a request
takes part in decode steps once its whole prompt is in the cache. So joining requests cost the running ones
one forward per step, never a whole long prompt or one forward per short one. Blocks go back to the pool when
a request ends, however it ends.
Each step decodes one token for every running request at once. Out-of-memory errors are confined to
the request that caused them. The engine knows nothing about HTTP; events reach the event loop
through `RequestStream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.detokenize import IncrementalText
from workers.grammar import GrammarMasks, TokenConstraint
from workers.kv_cache import blocks_for
from workers.ledger import VramExhausted, VramLedger
from workers.pace import Pace
from workers.prefill import Joining, PrefillQueue
from workers.processors import RowProcessors, StepLogprobs, TokenLogprob, host_logprobs, row_logprobs, take
from workers.runner import ModelRunner, PrefillPart
from workers.sampling import SamplingParams, generator_for, sample

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


class EngineError(Exception):
    """Generation failed for a reason other than memory."""


@dataclass
class GenerationRequest:
    id: str
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    min_tokens: int = 0
    """End-of-sequence tokens are suppressed until this many tokens were generated."""
    constraint: TokenConstraint | None = None
    """A grammar (response_format, a forced tool call): only tokens it allows are sampled; it ends the request
    when complete."""


@dataclass(frozen=True)
class TextDelta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    """The tokens accepted since the previous delta (end of sequence excluded), when the request asked."""


@dataclass(frozen=True)
class Finished:
    reason: str
    """`stop` (end of sequence or a stop string) or `length` (max_tokens)."""
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    error: Exception


Event = TextDelta | Finished | Failed


class RequestStream:
    """The event-loop side of one request: await its events in order; cancel to stop it early."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False

    async def next(self) -> Event:
        return await self._queue.get()

    def cancel(self) -> None:
        self.cancelled = True

    def emit(self, event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)


@dataclass
class _Running:
    stream: RequestStream
    text: IncrementalText
    generator: torch.Generator | None
    seq: int
    length: int
    last_token: int = 0
    completion: int = 0
    done: bool = False
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """Accepted tokens' log-probabilities not yet sent with a delta."""
    grammar_ahead: bool = False
    """Its grammar already took the last sampled token (a step queued ahead needed its next mask)."""

    @property
    def request(self) -> GenerationRequest:
        return self.stream.request

    @property
    def remaining(self) -> int:
        return self.request.max_tokens - self.completion


@dataclass(eq=False)
class _Admitted:
    """A request whose prompt is being prefilled: what it takes into its batch row when the prompt is complete."""

    stream: RequestStream
    generator: torch.Generator | None
    seq: int


@dataclass
class EngineStats:
    queue_depth: int = 0
    running: int = 0
    """Requests holding a batch slot: decoding, or their prompt being prefilled."""
    decode_steps: int = 0
    decode_tokens: int = 0
    largest_batch: int = 0
    tokens_per_second: float = 0.0
    """Decode throughput over the last few seconds, all running requests together."""
    prefill_forwards: int = 0
    prefill_tokens: int = 0


@dataclass
class _Step:
    """One queued decode step: its tokens on the device, and a copy on the host once `ready` says so."""

    tokens: torch.Tensor
    logprobs: StepLogprobs | None
    host: torch.Tensor
    """Pinned on a GPU, so the copy runs behind the step without stalling the host."""
    ready: torch.cuda.Event | None
    """Recorded after the copy (None on the CPU, where the copy is done when it returns)."""

    def host_tokens(self) -> list[int]:
        """Waits for this step's sampling only, not for a step queued behind it."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.host[: len(self.tokens)].tolist()


FaultHook = Callable[[str, list[str]], None]
"""Called before each prefill forward ("prefill", the ids packed into it) and decode step ("decode", ids); tests
raise from it."""


class Engine:
    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: Any,
        ledger: VramLedger,
        *,
        eos_ids: Collection[int],
        queue_size: int,
        fault_hook: FaultHook | None = None,
    ) -> None:
        self.runner = runner
        self.cache = runner.cache
        self.tokenizer = tokenizer
        self.ledger = ledger
        self.eos_ids = frozenset(eos_ids)
        self._eos_index = torch.tensor(sorted(self.eos_ids), device=runner.device) if self.eos_ids else None
        self._minus_inf = torch.full((), float("-inf"), device=runner.device)
        """What min_tokens writes over the end-of-sequence logits: a device tensor, because a Python float there
        becomes a host tensor that indexing copies to the device each step, and that copy waits for the queue."""
        self._rows_key: tuple[int, ...] = ()
        self._rows_tensor = torch.zeros(0, dtype=torch.long, device=runner.device)
        self.processors = RowProcessors(runner.cache.max_batch, runner.device)
        pinned = runner.device.type == "cuda"
        self._host_tokens = [torch.empty(runner.cache.max_batch, dtype=torch.long, pin_memory=pinned) for _ in "ab"]
        """Two, used in turn: step k's copy is still read after step k+1's copy was queued."""
        self._steps = itertools.count()
        self._masks: GrammarMasks | None = None
        self.queue_size = queue_size
        self.max_batch = runner.cache.max_batch
        self.max_len = runner.cache.max_len
        self.stats = EngineStats()
        self._fault_hook = fault_hook
        self._pending: deque[RequestStream] = deque()
        self._rows: list[_Running] = []
        self._joining: PrefillQueue[_Admitted] = PrefillQueue(runner.prefill_chunk)
        """Requests whose prompts are being prefilled: each holds its blocks and a batch slot, not yet a row."""
        self._idle_budget = runner.prefill_chunk_idle
        """Tokens a forward takes while no row decodes (back to `prefill_chunk` if that ever runs out of memory)."""
        self._blocks: dict[RequestStream, list[int]] = {}
        """The cache blocks each joined request owns, until it ends."""
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._rate: deque[tuple[float, int]] = deque()
        self.pace = Pace()
        """Recent step time, prefill forwards and answer length: what the router predicts a wait here from."""
        self._stepped_at = 0.0
        self.crashed = False

    def _grammar_masks(self) -> GrammarMasks:
        """Made on the first constrained step (a worker that never sees one never allocates it)."""
        if self._masks is None:
            self._masks = GrammarMasks(self.max_batch, self.vocab_size, self.runner.device)
        return self._masks

    @property
    def vocab_size(self) -> int:
        """The width of the model's logits: the token ids `logit_bias` may name."""
        head = self.runner.model.get_output_embeddings()
        return int(head.weight.shape[0]) if head is not None else int(self.runner.model.config.vocab_size)

    # --- event-loop side -------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> RequestStream:
        """Queue a request, or refuse it at once: `QueueFull`, or `VramExhausted` with bytes needed and free."""
        if len(request.prompt) + request.max_tokens > self.max_len:
            raise ValueError(
                f"prompt ({len(request.prompt)}) + max_tokens ({request.max_tokens}) exceed {self.max_len}"
            )
        with self._wake:
            if self.crashed or self._stopping:
                raise EngineError("the generation engine is not running")
            if len(self._pending) >= self.queue_size:
                raise QueueFull(f"{len(self._pending)} requests already waiting")
            self.ledger.reserve(request.id, len(request.prompt) + request.max_tokens)
            stream = RequestStream(request, loop)
            self._pending.append(stream)
            self.stats.queue_depth = len(self._pending)
            self._wake.notify()
        return stream

    def queued_prompt_tokens(self) -> int:
        """Prompt tokens of the requests waiting, and those not yet prefilled of the joining ones: prefill work
        ahead of a new request."""
        with self._wake:
            return sum(len(stream.request.prompt) for stream in self._pending) + self._joining.backlog

    @property
    def prefill_budget(self) -> int:
        """Prompt tokens one prefill forward takes at most, all packed prompts together."""
        return self._joining.budget

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # --- engine thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                self._serve()
        except Exception:  # a bug; fail every request rather than hang them, and refuse new ones
            log.exception("engine loop crashed")
            self.crashed = True
        finally:
            self._fail_all(EngineError("the generation engine stopped"))

    def _serve(self) -> None:
        while not self._stopping:
            self._admit()
            if not self._rows and not len(self._joining):
                with self._wake:
                    if not self._pending and not self._stopping:
                        self._wake.wait(timeout=0.5)
                continue
            if len(self._joining):
                self._prefill()
            self._step()

    def _admit(self) -> None:
        """Move queued requests in while batch slots (rows and prompts being prefilled) and blocks allow."""
        while len(self._rows) + len(self._joining) < self.max_batch:
            with self._wake:
                if not self._pending:
                    return
                stream = self._pending[0]
                if stream.cancelled:
                    self._pending.popleft()
                    self.ledger.release(stream.request.id)
                    continue
                blocks = self._blocks_needed(stream.request)
                allocator = self.cache.allocator
                if blocks <= allocator.total and blocks > allocator.free:
                    return  # waits until running requests finish (the ledger admitted it, so they will)
                self._pending.popleft()
                self.stats.queue_depth = len(self._pending)
            if blocks > allocator.total:  # only when the ledger's budget outgrew the pool: refuse, never wait forever
                free = allocator.free * self.cache.block_bytes
                self._end(stream, Failed(VramExhausted(blocks * self.cache.block_bytes, free)))
                continue
            self._join(stream, allocator.allocate(blocks))

    def _blocks_needed(self, request: GenerationRequest) -> int:
        """Its worst case, as the ledger reserved it: prompt and max_tokens, in whole blocks."""
        return blocks_for(len(request.prompt) + request.max_tokens, self.cache.block_size)

    def _join(self, stream: RequestStream, blocks: list[int]) -> None:
        """Its blocks and a batch slot are its own from now on; its prompt waits for the next prefill forwards."""
        request = stream.request
        self._blocks[stream] = blocks
        try:  # a request's own settings must fail that request only, never the engine loop
            generator = generator_for(request.sampling, self.runner.device)
        except (ValueError, RuntimeError, OverflowError) as exc:
            self._end(stream, Failed(EngineError(f"invalid sampling settings: {exc}")))
            return
        if not request.prompt:
            self._end(stream, Failed(EngineError("an empty prompt has nothing to continue")))
            return
        self._joining.add(_Admitted(stream, generator, next(self._seq)), request.prompt, blocks)

    def _prefill(self) -> None:
        """One packed forward over the next chunks of the joining prompts; those it completes start decoding."""
        for joining in self._joining:
            if joining.owner.stream.cancelled:
                self._joining.remove(joining)
                self._release(joining.owner.stream)
        batch = self._joining.next_forward(self._joining.budget if self._rows else self._idle_budget)
        if batch:
            self._prefill_forward(batch)
        self.stats.running = len(self._rows) + len(self._joining)

    def _prefill_forward(self, batch: list[tuple[Joining[_Admitted], PrefillPart]]) -> None:
        """A fault in a forward of several prompts is not blamed on all of them: each is tried again alone, so it
        stays with the one that causes it (out of memory: refused with `vram_exhausted`; anything else: failed)."""
        ids = [joining.owner.stream.request.id for joining, _ in batch]
        tokens = sum(len(part.tokens) for _, part in batch)
        started = time.monotonic()
        try:
            if self._fault_hook:
                self._fault_hook("prefill", ids)
            logits = self.runner.prefill([part for _, part in batch])
        except torch.OutOfMemoryError:
            if tokens > self._joining.budget:
                self._shrink_idle_budget(tokens)
                return  # nothing advanced: the same prompts go on in forwards of `prefill_chunk`
            if len(batch) > 1:
                self._retry_alone(batch, out_of_memory=True)
                return
            self._joining.remove(batch[0][0])
            self._out_of_memory([batch[0][0].owner.stream])
            return
        except Exception as exc:
            if len(batch) > 1:
                self._retry_alone(batch, out_of_memory=False)
                return
            log.exception("prefill failed for %s", ids[0])
            self._joining.remove(batch[0][0])
            self._end(batch[0][0].owner.stream, Failed(EngineError(f"prefill failed: {type(exc).__name__}")))
            return
        completed = self._joining.advance(batch)
        if completed:
            self._start_decoding(completed, logits)  # samples their first tokens: waits for the forward
        elif self.runner.device.type == "cuda":
            torch.cuda.synchronize(self.runner.device)  # so the forward's time is its own, not the next step's
        self.pace.prefilled(tokens, time.monotonic() - started)
        self.stats.prefill_forwards += 1
        self.stats.prefill_tokens += tokens

    def _shrink_idle_budget(self, tokens: int) -> None:
        log.warning(
            "a %d-token prefill forward ran out of memory: forwards take at most prefill_chunk (%d) from now on",
            tokens,
            self._joining.budget,
        )
        self._idle_budget = self._joining.budget
        if self.runner.device.type == "cuda":
            torch.cuda.empty_cache()

    def _retry_alone(self, batch: list[tuple[Joining[_Admitted], PrefillPart]], *, out_of_memory: bool) -> None:
        log.warning("a packed prefill of %d prompts failed: trying each alone", len(batch))
        if out_of_memory:
            if self.runner.device.type == "cuda":
                torch.cuda.empty_cache()
            self.ledger.widen_margin()
        for item in batch:
            self._prefill_forward([item])

    def _start_decoding(self, completed: list[Joining[_Admitted]], logits: torch.Tensor) -> None:
        """Give each completed prompt the next batch row, with its blocks and sampling settings, and sample its
        first token from its last position's logits (`logits`: one row each, in order)."""
        first = len(self._rows)
        joined: list[_Running] = []
        for row, joining in enumerate(completed, start=first):
            admitted = joining.owner
            request = admitted.stream.request
            self.cache.assign(row, joining.blocks)
            sampling = request.sampling
            self.processors.set_row(
                row,
                presence=sampling.presence_penalty,
                frequency=sampling.frequency_penalty,
                bias=sampling.logit_bias,
                logprobs=sampling.logprobs,
            )
            running = _Running(
                stream=admitted.stream,
                text=IncrementalText(self.tokenizer, request.stop),
                generator=admitted.generator,
                seq=admitted.seq,
                length=len(request.prompt),
            )
            self._rows.append(running)
            joined.append(running)
        tokens, logprobs = self._sample(logits, joined, ahead=0, start=first)
        host = host_logprobs(logprobs)
        for i, (running, token) in enumerate(zip(joined, tokens.tolist(), strict=True)):
            self._accept(running, token, row_logprobs(host, i, token, running.request.sampling.logprobs))
        self._sweep()

    def _step(self) -> None:
        """Decode until the batch changes, keeping one step queued on the device ahead of the host.

        While the host turns step k's tokens into text and events, the device already runs step k+1,
        fed from step k's tokens without leaving the GPU; so host work is off the critical path.
        A row that finished at step k has one extra token computed at k+1, which is discarded.
        """
        self._sweep()
        if not self._rows:
            return
        rows = len(self._rows)
        self.runner.input_ids[:rows, 0].copy_(torch.tensor([r.last_token for r in self._rows]))
        self.runner.positions[:rows, 0].copy_(torch.tensor([r.length for r in self._rows]))
        self._stepped_at = time.monotonic()
        step = self._launch(ahead=0)
        while step is not None:
            queued = None
            if self._can_chain():
                self.runner.input_ids[:rows, 0].copy_(step.tokens)
                self.runner.positions[:rows] += 1
                queued = self._launch(ahead=1, prior=step)
            self._consume(step)
            step = queued
        self._sweep()

    def _launch(self, ahead: int, prior: _Step | None = None) -> _Step | None:
        """Queue one decode step for every running row, each at its position (`ahead` past its length); None after
        an out-of-memory error.

        `prior`: the step still to be consumed (this one runs ahead of it); grammars then advance by its tokens
        while the device runs this step's forward pass, before this step's masks are filled."""
        rows = len(self._rows)
        longest = max(r.length for r in self._rows) + ahead + 1
        try:
            if self._fault_hook:
                self._fault_hook("decode", [r.request.id for r in self._rows])
            logits = self.runner.decode(rows, longest)
            if prior is not None:
                self._advance_grammars(prior)
            tokens, logprobs = self._sample(logits, self._rows, ahead, start=0)
        except torch.OutOfMemoryError:
            # Blame the newest request: it is the one the memory was not planned for.
            self._out_of_memory([max(self._rows, key=lambda r: r.seq).stream])
            return None
        host = self._host_tokens[next(self._steps) % 2]
        host[: len(tokens)].copy_(tokens, non_blocking=True)
        ready = None
        if tokens.device.type == "cuda":
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record()
        return _Step(tokens, logprobs, host, ready)

    def _advance_grammars(self, prior: _Step) -> None:
        """Feed each grammar the token its row got at `prior` (it is accepted again, as text, when consumed)."""
        if all(r.request.constraint is None for r in self._rows):
            return
        for running, token in zip(self._rows, prior.host_tokens(), strict=True):
            constraint = running.request.constraint
            if constraint is not None and not running.done and not constraint.stopped:
                constraint.accept(token)
                running.grammar_ahead = True

    def _can_chain(self) -> bool:
        """Another step queued ahead only while nothing waits to join: a prompt being prefilled gets its next
        forward after each step."""
        if self._pending or len(self._joining):
            return False
        return all(not r.done and not r.stream.cancelled and r.remaining > 1 for r in self._rows)

    def _consume(self, step: _Step) -> None:
        tokens = step.host_tokens()
        host = host_logprobs(step.logprobs)
        for i, (running, token) in enumerate(zip(self._rows, tokens, strict=True)):
            if not running.done:
                running.length += 1
                self._accept(running, token, row_logprobs(host, i, token, running.request.sampling.logprobs))
        self._count(len(tokens))

    def _sample(
        self, logits: torch.Tensor, rows: list[_Running], ahead: int, start: int
    ) -> tuple[torch.Tensor, StepLogprobs | None]:
        """The next token of cache rows [start, start + len(rows)), and their log-probabilities if any asked.

        `ahead`: how many tokens each row will have gained before these are consumed (for min_tokens)."""
        self.processors.apply(logits, start)
        early = tuple(i for i, r in enumerate(rows) if r.completion + ahead < r.request.min_tokens)
        if early and self._eos_index is not None:
            logits.index_put_((self._row_index(early)[:, None], self._eos_index[None, :]), self._minus_inf)
        constrained = [
            (i, r.request.constraint)
            for i, r in enumerate(rows)
            if r.request.constraint is not None and not r.request.constraint.stopped
        ]
        if constrained:
            self._grammar_masks().mask(logits, constrained)
        chosen = sample(logits, [r.request.sampling for r in rows], [r.generator for r in rows])
        self.processors.record(chosen, start)
        return chosen, self.processors.logprobs(logits, chosen, start)

    def _row_index(self, rows: tuple[int, ...]) -> torch.Tensor:
        """The rows as a device tensor, rebuilt only when they change: a host-to-device copy from pageable
        memory waits for the device, which would stall the step queued ahead."""
        if self._rows_key != rows:
            self._rows_key = rows
            self._rows_tensor = torch.tensor(rows, device=self.runner.device)
        return self._rows_tensor

    def _accept(self, running: _Running, token: int, logprob: TokenLogprob | None) -> None:
        running.completion += 1
        running.last_token = token
        stream = running.stream
        if token in self.eos_ids:
            self._finish(running, "stop")
            return
        if logprob is not None:
            running.logprobs.append(logprob)
        delta = running.text.push(token)
        if delta:
            stream.emit(TextDelta(delta, take(running.logprobs)))
        constraint = running.request.constraint
        if constraint is not None and not running.grammar_ahead:
            constraint.accept(token)
        running.grammar_ahead = False
        if running.text.stopped or (constraint is not None and constraint.stopped):
            self._finish(running, "stop")
        elif running.remaining <= 0:
            self._finish(running, "length")

    def _finish(self, running: _Running, reason: str) -> None:
        tail = running.text.finish()
        if tail or running.logprobs:
            running.stream.emit(TextDelta(tail, take(running.logprobs)))
        self._end(running.stream, Finished(reason, len(running.request.prompt), running.completion))
        self.pace.finished(running.completion)
        running.done = True

    def _end(self, stream: RequestStream, event: Event) -> None:
        self._release(stream)
        stream.emit(event)

    def _release(self, stream: RequestStream) -> None:
        """Its blocks back to the pool, then its reservation (so the ledger never promises blocks still held)."""
        self.cache.allocator.release(self._blocks.pop(stream, []))
        self.ledger.release(stream.request.id)

    def _sweep(self) -> None:
        """Drop finished and cancelled rows, keeping the running ones in rows [0, n)."""
        i = 0
        while i < len(self._rows):
            running = self._rows[i]
            if running.stream.cancelled and not running.done:
                self._release(running.stream)
                running.done = True
            if not running.done:
                i += 1
                continue
            last = len(self._rows) - 1
            if i != last:  # the last row's sequence takes this row: a block-table row moves, no KV data
                self.cache.move_row(last, i)
                self.processors.move_row(last, i)
                self._rows[i] = self._rows[last]
            else:
                self.cache.clear_row(last)
            self._rows.pop()
        self.stats.running = len(self._rows) + len(self._joining)

    def _out_of_memory(self, victims: list[RequestStream]) -> None:
        """Free the victims' cache and reservation, empty the allocator cache, keep a wider margin."""
        for stream in victims:
            needed = self.ledger.bytes_for(len(stream.request.prompt) + stream.request.max_tokens)
            free = self.ledger.snapshot().free
            for running in self._rows:
                if running.stream is stream:
                    running.done = True
            self._end(stream, Failed(VramExhausted(needed, free)))
            log.warning("out of memory serving %s: refused it, widening the safety margin", stream.request.id)
        if self.runner.device.type == "cuda":
            torch.cuda.empty_cache()
        self.ledger.widen_margin()

    def _count(self, rows: int) -> None:
        stats = self.stats
        stats.decode_steps += 1
        stats.decode_tokens += rows
        stats.largest_batch = max(stats.largest_batch, rows)
        now = time.monotonic()
        self.pace.decoded(now - self._stepped_at)  # from the launch, or the step before: the host waited for it
        self._stepped_at = now
        self._rate.append((now, rows))
        while self._rate and now - self._rate[0][0] > 5.0:
            self._rate.popleft()
        span = now - self._rate[0][0]
        stats.tokens_per_second = sum(n for _, n in self._rate) / span if span > 0 else 0.0

    def _fail_all(self, error: Exception) -> None:
        with self._wake:
            pending = list(self._pending)
            self._pending.clear()
        joining = [j.owner.stream for j in self._joining]
        for j in self._joining:
            self._joining.remove(j)
        for stream in pending + joining + [r.stream for r in self._rows if not r.done]:
            self._end(stream, Failed(error))
        self._rows.clear()
