"""The request pipeline: authenticate → parse → decide → admit → guard → dispatch, and one Outcome recorded.

`RoutingService.chat` is all a chat endpoint calls; `route` answers `/v1/route` with the same decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from router.core.config import Config
from router.core.state import StateStore, StateUnavailable
from router.decide.access import Caller, KeyStore
from router.decide.classify.base import ComplexityClassifier
from router.decide.conversation import Conversation, extra_chars
from router.decide.rules import RouteInput, RuleSet
from router.dispatch.backends import TierBackend
from router.dispatch.chain import Dispatcher
from router.dispatch.fleet import Fleet
from router.dispatch.outcome import Answer, Outcome, StreamAnswer
from router.guard.pipeline import GuardedDispatch
from router.guard.rails import Guard
from router.ops.metrics import Observer, completion_tokens
from router.ops.reload import ConfigReloader
from router.ops.status import ROUTED_COUNTS, StatusReporter
from router.wire.decode import parse_chat_request
from router.wire.errors import InvalidRequest, LimiterUnavailable, RateLimited, RouterError, UpstreamError
from router.wire.protocol import DEFAULT_MAX_TOKENS, ChatCompletionRequest, RouteDecision

log = logging.getLogger(__name__)
access = logging.getLogger("router.access")
PROMPT_LOG_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request was counted for against its key's tokens-per-minute limit."""

    key: str
    tpm: int
    tokens: int


def needs_guard(config: Config) -> bool:
    """Does any tier or rule ask for guardrails (or `guardrails.scope: all`)? Only then is NeMo loaded, and then
    every request is screened by the LLM-free input rails."""
    if config.guardrails.scope == "all":
        return True
    return any(t.guardrails for t in config.tiers.values()) or any(r.guardrails for r in config.rules)


class RoutingService:
    """Owns the routing pipeline; its resources (client, store, classifier) are owned by the app's lifespan."""

    def __init__(
        self,
        config: Config,
        classifier: ComplexityClassifier,
        backends: Mapping[str, TierBackend],
        store: StateStore,
        guard: Guard | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.config = config
        self.rules = RuleSet(config)
        self.classifier = classifier
        self.backends = dict(backends)
        self.fleet = fleet
        self.dispatcher = Dispatcher(config, self.backends, fleet)
        if fleet is not None:
            fleet.counters = self.dispatcher.counters
        self.observer = Observer(self.dispatcher.counters, lambda: self.dispatcher.callers, is_local=self._is_worker)
        self.keys = KeyStore(config.auth, store) if config.auth.enabled else None
        self._background: set[asyncio.Task[None]] = set()
        self.reloader: ConfigReloader | None = None
        """Set by the app when the config came from a file (hot reload)."""
        self.guarded = GuardedDispatch(guard, self.dispatcher) if guard is not None else None
        self.store = store
        self._routed: Counter[str] = Counter()
        self._streams: Counter[str] = Counter()
        """Open streams per key (this replica): each holds a connection to a tier, so `auth.max_streams_per_key`."""
        self.status = StatusReporter(
            self.backends,
            store,
            classifier.name,
            fleet,
            self.dispatcher,
            self.observer,
            lambda: (self.config, self.rules.threshold, self.reloader.state if self.reloader else None),
        )

    async def chat(self, body: bytes, headers: Mapping[str, str]) -> Answer | StreamAnswer:
        """One chat request through the whole pipeline; its Outcome is recorded when it ends (error or not)."""
        started = time.perf_counter()
        outcome = Outcome()
        admission: Admission | None = None
        prompt: str | None = None
        holder: str | None = None
        try:
            caller, request, decision = await self.route(body, headers)
            outcome.decision, outcome.stream = decision, bool(request.stream)
            outcome.tokens_in, prompt = decision.prompt_tokens, request.last_user_text()
            if request.stream and caller is not None:
                holder = self._hold_stream(caller)
            admission = await self.admit(caller, decision, request)
            self.observer.scored(decision.score)
            if request.stream:
                opened = await self.open_stream(request, decision)
            else:
                answer = await self.complete(request, decision)
        except BaseException as exc:
            self._release_stream(holder)
            if not isinstance(exc, RouterError):
                raise
            outcome.status = exc.status_code
            if isinstance(exc, UpstreamError):
                outcome.failed_on = exc.tier
            outcome.seconds = time.perf_counter() - started
            self._finish(outcome, admission, prompt)
            raise
        if not request.stream:
            answer.outcome.tokens_in = outcome.tokens_in
            answer.outcome.tokens_out = completion_tokens(answer.body)
            answer.outcome.seconds = time.perf_counter() - started
            self._finish(answer.outcome, admission, prompt)
            return answer
        opened.outcome.tokens_in, opened.outcome.stream = outcome.tokens_in, True

        def done(ttft: float | None, seconds: float, chunks: int) -> None:
            self._release_stream(holder)
            opened.outcome.ttft, opened.outcome.seconds, opened.outcome.tokens_out = ttft, seconds, chunks
            self._finish(opened.outcome, admission, prompt)

        opened.chunks = self.observer.watch(opened.chunks, started, done)
        return opened

    async def route(
        self, body: bytes, headers: Mapping[str, str]
    ) -> tuple[Caller | None, ChatCompletionRequest, RouteDecision]:
        """Everything before generating: the key, the request within its limits, the decision within the key's tiers
        and with a tier that supports what the request needs."""
        caller = await self.authenticate(headers.get("authorization"))
        request = parse_chat_request(body)
        self.check_limits(request)
        decision = self.restrict(await self.decide(request, headers, caller), caller)
        self.dispatcher.require_capable(request, decision)  # a 400 before anything is sent, not a silent ignore
        return caller, request, decision

    async def decide(
        self, request: ChatCompletionRequest, headers: Mapping[str, str], caller: Caller | None = None
    ) -> RouteDecision:
        conversation = Conversation.from_request(request, self.config.classifier.max_chars)
        verdict = await self.classifier.ascore(conversation)
        group, may_force = (caller.group, caller.force_tiers) if caller is not None else (None, True)
        decision = self.rules.decide(RouteInput(request, conversation, verdict, headers, group, may_force))
        decision.reasons.append(f"prompt: ~{conversation.prompt_tokens} tokens over {len(request.messages)} messages")
        decision.prompt_tokens = conversation.prompt_tokens
        return decision

    async def authenticate(self, authorization: str | None) -> Caller | None:
        """The calling key (401 without a valid one), or None when `auth.enabled` is off."""
        return await self.keys.authenticate(authorization) if self.keys is not None else None

    def check_limits(self, request: ChatCompletionRequest) -> None:
        """The input limits (`limits`): message count, text size, max_tokens; a 400 naming the one exceeded."""
        limits = self.config.limits
        if len(request.messages) > limits.max_messages:
            raise InvalidRequest(
                f"{len(request.messages)} messages; at most {limits.max_messages} are accepted", param="messages"
            )
        chars = sum(len(m.text()) for m in request.messages) + extra_chars(request)
        if chars > limits.max_content_chars:
            raise InvalidRequest(
                f"the messages, tools and other prompt fields hold {chars} characters; at most "
                f"{limits.max_content_chars} are accepted",
                param="messages",
            )
        wanted = request.token_limit()
        if wanted is not None and wanted > limits.max_tokens:
            raise InvalidRequest(f"max_tokens is {wanted}; at most {limits.max_tokens} is accepted", param="max_tokens")

    def _hold_stream(self, caller: Caller) -> str:
        """Count one more open stream for the key; 429 beyond `auth.max_streams_per_key`."""
        cap = self.config.auth.max_streams_per_key
        if self._streams[caller.name] >= cap:
            self.dispatcher.counters.inc("rate_limited", key=caller.name)
            raise RateLimited(f"this key already holds {cap} open streams, its limit; retry when one ends", 1.0)
        self._streams[caller.name] += 1
        return caller.name

    def _release_stream(self, holder: str | None) -> None:
        if holder is not None:
            self._streams[holder] -= 1
            if self._streams[holder] <= 0:
                del self._streams[holder]

    def restrict(self, decision: RouteDecision, caller: Caller | None) -> RouteDecision:
        """Keep only the tiers the key may use in the decision's chain (403 if none)."""
        if caller is None or caller.tiers is None:
            return decision
        chain = caller.allowed([decision.tier, *decision.fallback])
        if chain[0] != decision.tier:
            decision.reasons.append(f"tier '{decision.tier}' not allowed for key '{caller.name}': '{chain[0]}' instead")
        decision.tier, decision.fallback = chain[0], chain[1:]
        return decision

    async def admit(
        self, caller: Caller | None, decision: RouteDecision, request: ChatCompletionRequest
    ) -> Admission | None:
        """Count the request against the key's per-minute limits, shared by every replica through Redis.

        Tokens are reserved at the request's worst known case (the prompt estimate, every field that reaches the
        prompt counted, plus max_tokens or the default); when it ends, what it really used is charged instead,
        above the reservation too (`_settle`)."""
        tokens = decision.prompt_tokens + (request.token_limit() or DEFAULT_MAX_TOKENS)
        return await self.admit_cost(caller, tokens)

    async def admit_cost(self, caller: Caller | None, tokens: int) -> Admission | None:
        """Take one request and `tokens` from the key's buckets (429 with Retry-After if they do not hold them)."""
        if caller is None or not (caller.rpm or caller.tpm):
            return None
        if caller.tpm and tokens > caller.tpm:
            raise InvalidRequest(
                f"this request may use {tokens} tokens, more than the key's limit of {caller.tpm} per minute",
                param="max_tokens",
            )
        key = f"key:{caller.name}"
        try:
            wait = await self.store.rate_admit(key, (caller.rpm, caller.tpm), (1, tokens))
        except StateUnavailable as exc:
            if self.config.auth.fail_open:
                log.warning("rate limiter unavailable, letting the request through (auth.fail_open): %s", exc)
                return None
            raise LimiterUnavailable("the rate limiter is unavailable; try again shortly") from exc
        if wait > 0:
            self.dispatcher.counters.inc("rate_limited", key=caller.name)
            raise RateLimited(f"rate limit reached for key '{caller.name}'; retry in {wait:.1f} s", wait)
        return Admission(key, caller.tpm, tokens) if caller.tpm else None

    def _settle(self, admission: Admission, used: int) -> None:
        """Charge what the request used instead of what was reserved: the difference, either way."""
        difference = used - admission.tokens
        if difference == 0:
            return

        async def settle() -> None:
            try:
                await self.store.rate_adjust(admission.key, admission.tpm, difference)
            except StateUnavailable as exc:
                log.warning("the rate limiter was not told what a request used: %s", exc)

        task = asyncio.get_running_loop().create_task(settle())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def apply(self, config: Config) -> None:
        """Switch to a reloaded config (rules, thresholds, routing settings); router.ops.reload checked it."""
        rules = RuleSet(config)
        keys = KeyStore(config.auth, self.store) if config.auth.enabled else None
        self.config, self.rules, self.keys = config, rules, keys
        self.dispatcher.config = config

    def _guarded(self, decision: RouteDecision) -> GuardedDispatch | None:
        """Every request goes through the guard once one is loaded: its hops decide which rails apply."""
        if self.guarded is None and decision.guardrails:  # start-up loads the guard whenever one is asked for
            raise RuntimeError("a guarded route was decided but no guard is loaded")
        return self.guarded

    async def complete(self, request: ChatCompletionRequest, decision: RouteDecision) -> Answer:
        self._routed[decision.tier] += 1
        guarded = self._guarded(decision)
        if guarded is not None:
            return await guarded.complete(request, decision)
        reply, route = await self.dispatcher.complete(request, decision)
        return Answer(reply.body, Outcome(decision, route))

    async def open_stream(self, request: ChatCompletionRequest, decision: RouteDecision) -> StreamAnswer:
        self._routed[decision.tier] += 1
        guarded = self._guarded(decision)
        if guarded is not None:
            return await guarded.stream(request, decision)
        upstream, route = await self.dispatcher.open_stream(request, decision)
        return StreamAnswer(upstream.chunks(), Outcome(decision, route))

    def _is_worker(self, tier: str) -> bool:
        """A tier of ours (served locally), not a remote API: what the local share counts."""
        config = self.config.tiers.get(tier)
        return config is not None and config.kind == "worker"

    def refused(self, status: int) -> None:
        """Record a request refused at the door (router.api.entry: no JSON, a bad key, throttled): it ends here."""
        self._finish(Outcome(status=status), None, None)

    def _finish(self, outcome: Outcome, admission: Admission | None, prompt: str | None) -> None:
        """Record one finished request (an error too): metrics, the status window, the access log, its tokens."""
        self.observer.record(outcome)
        if admission is not None:
            self._settle(admission, outcome.tokens_in + outcome.tokens_out)
        fields: dict[str, object] = {
            "status": outcome.status,
            "tier": outcome.tier,
            "rule": outcome.rule,
            "stream": outcome.stream,
            "seconds": round(outcome.seconds, 4),
            "tokens_in": outcome.tokens_in,
            "tokens_out": outcome.tokens_out,
        }
        if outcome.ttft is not None:
            fields["ttft"] = round(outcome.ttft, 4)
        if outcome.fallback:
            fields["fallback"] = outcome.fallback
            fields["reason"] = outcome.route.reason if outcome.route else None
        if outcome.blocked_by:
            fields["guardrail"] = outcome.blocked_by
        if prompt is not None and self.config.logging.prompts:
            fields["prompt"] = prompt[:PROMPT_LOG_CHARS]
        access.info("request", extra=fields)

    async def flush_counts(self) -> None:
        """Move this replica's counts into the shared store (Redis or memory); kept for the next try on failure."""
        if not self._routed:
            return
        pending, self._routed = self._routed, Counter()
        try:
            await self.store.add_counts(ROUTED_COUNTS, pending)
        except StateUnavailable as exc:
            self._routed.update(pending)
            log.warning("state store unavailable, counts kept locally: %s", exc)

    async def flush_forever(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.flush_counts()
