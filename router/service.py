"""The routing service: parse a chat request, decide its tier, and call that tier's backend."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from router.auth import Caller, KeyStore
from router.backends import TierBackend
from router.classify.base import ComplexityClassifier
from router.config import Config
from router.conversation import Conversation
from router.dispatch import Answer, Dispatcher, StreamAnswer
from router.errors import InvalidRequest, LimiterUnavailable, RateLimited
from router.fleet import Fleet
from router.guard.pipeline import GuardedDispatch
from router.guard.rails import Guard
from router.observe import Observer, RequestRecord, completion_tokens
from router.protocol import ChatCompletionRequest, RouteDecision, decode_chat_request
from router.reload import ConfigReloader
from router.rules import RouteInput, RuleSet
from router.state import StateStore, StateUnavailable

log = logging.getLogger(__name__)
access = logging.getLogger("router.access")
PROMPT_LOG_CHARS = 2000
DEFAULT_COMPLETION_TOKENS = 256


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request was counted for against its key's tokens-per-minute limit."""

    key: str
    window: int
    tokens: int


"""What a request with no max_tokens counts against a tokens-per-minute limit."""

ROUTED_COUNTS = "routed"
READY_CACHE_S = 2.0
"""`/status` refreshes every second; tier probes are redone at most this often."""


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate a chat request, turning every decoding problem into a 400 naming the field."""
    if not body.strip():
        raise InvalidRequest("the request body is empty; expected a JSON chat completion request")
    try:
        return decode_chat_request(body)
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid UTF-8 (byte {exc.start})") from exc
    except msgspec.ValidationError as exc:
        reason, _, where = str(exc).partition(" - at `$")
        param = where.rstrip("`").lstrip(".") or None
        raise InvalidRequest(f"{reason}" + (f" at '{param}'" if param else ""), param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc


def needs_guard(config: Config) -> bool:
    """Does any tier or rule ask for guardrails? Only then is NeMo loaded."""
    return any(t.guardrails for t in config.tiers.values()) or any(r.guardrails for r in config.rules)


def decision_headers(decision: RouteDecision) -> dict[str, str]:
    return {
        "x-router-tier": decision.tier,
        "x-router-rule": decision.rule,
        "x-router-score": f"{decision.score:.4f}",
    }


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
        self.observer = Observer(self.dispatcher.counters, lambda: self.dispatcher.callers)
        self._ready_cache: tuple[float, dict[str, object]] | None = None
        self.keys = KeyStore(config.auth, store) if config.auth.enabled else None
        self._background: set[asyncio.Task[None]] = set()
        self.reloader: ConfigReloader | None = None
        """Set by the app when the config came from a file (hot reload)."""
        self.guarded = GuardedDispatch(guard, self.dispatcher) if guard is not None else None
        self.store = store
        self._routed: Counter[str] = Counter()

    async def route(
        self, body: bytes, headers: Mapping[str, str]
    ) -> tuple[Caller | None, ChatCompletionRequest, RouteDecision]:
        """Everything before generating: the key, the request within its limits, the decision within the key's tiers."""
        caller = await self.authenticate(headers.get("authorization"))
        request = parse_chat_request(body)
        self.check_limits(request)
        decision = await self.decide(request, headers, caller.group if caller else None)
        return caller, request, self.restrict(decision, caller)

    async def decide(
        self, request: ChatCompletionRequest, headers: Mapping[str, str], key_group: str | None = None
    ) -> RouteDecision:
        conversation = Conversation.from_request(request, self.config.classifier.max_chars)
        verdict = await self.classifier.ascore(conversation)
        decision = self.rules.decide(RouteInput(request, conversation, verdict, headers, key_group))
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
        chars = sum(len(m.text()) for m in request.messages)
        if chars > limits.max_content_chars:
            raise InvalidRequest(
                f"the messages hold {chars} characters; at most {limits.max_content_chars} are accepted",
                param="messages",
            )
        wanted = request.token_limit()
        if wanted is not None and wanted > limits.max_tokens:
            raise InvalidRequest(f"max_tokens is {wanted}; at most {limits.max_tokens} is accepted", param="max_tokens")

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

        Tokens are counted at their worst (prompt estimate + max_tokens); what the request did not use is
        given back when it ends (`observed`).
        """
        if caller is None or not (caller.rpm or caller.tpm):
            return None
        tokens = decision.prompt_tokens + (request.token_limit() or DEFAULT_COMPLETION_TOKENS)
        if caller.tpm and tokens > caller.tpm:
            raise InvalidRequest(
                f"this request may use {tokens} tokens, more than the key's limit of {caller.tpm} per minute",
                param="max_tokens",
            )
        key = f"key:{caller.name}"
        try:
            wait, window = await self.store.rate_admit(key, (caller.rpm, caller.tpm), (1, tokens), 60.0)
        except StateUnavailable as exc:
            if self.config.auth.fail_open:
                log.warning("rate limiter unavailable, letting the request through (auth.fail_open): %s", exc)
                return None
            raise LimiterUnavailable("the rate limiter is unavailable; try again shortly") from exc
        if wait > 0:
            self.dispatcher.counters.inc("rate_limited", key=caller.name)
            raise RateLimited(f"rate limit reached for key '{caller.name}'; retry after the current minute", wait)
        return Admission(key, window, tokens) if caller.tpm else None

    def _refund(self, admission: Admission, used: int) -> None:
        unused = admission.tokens - used
        if unused <= 0:
            return

        async def refund() -> None:
            try:
                await self.store.rate_refund(admission.key, admission.window, unused)
            except StateUnavailable as exc:
                log.warning("unused tokens not given back to the rate limiter: %s", exc)

        task = asyncio.get_running_loop().create_task(refund())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def apply(self, config: Config) -> None:
        """Switch to a reloaded config (rules, thresholds, routing settings); router.reload checked it."""
        rules = RuleSet(config)
        keys = KeyStore(config.auth, self.store) if config.auth.enabled else None
        self.config, self.rules, self.keys = config, rules, keys
        self.dispatcher.config = config

    def _guarded(self, decision: RouteDecision) -> GuardedDispatch | None:
        if not decision.guardrails:
            return None
        if self.guarded is None:  # start-up loads the guard whenever a tier or rule asks for it
            raise RuntimeError("a guarded route was decided but no guard is loaded")
        return self.guarded

    async def complete(self, request: ChatCompletionRequest, decision: RouteDecision) -> Answer:
        self._routed[decision.tier] += 1
        guarded = self._guarded(decision)
        if guarded is not None:
            answer = await guarded.complete(request, decision)
        else:
            reply, route = await self.dispatcher.complete(request, decision)
            answer = Answer(reply.body, route.headers())
        answer.headers = {**decision_headers(decision), **answer.headers}
        return answer

    async def open_stream(self, request: ChatCompletionRequest, decision: RouteDecision) -> StreamAnswer:
        self._routed[decision.tier] += 1
        guarded = self._guarded(decision)
        if guarded is not None:
            answer = await guarded.stream(request, decision)
        else:
            upstream, route = await self.dispatcher.open_stream(request, decision)
            answer = StreamAnswer(upstream.chunks(), route.headers())
        answer.headers = {**decision_headers(decision), **answer.headers}
        return answer

    def observed(
        self,
        decision: RouteDecision | None,
        headers: Mapping[str, str],
        status: int,
        seconds: float,
        *,
        stream: bool = False,
        ttft: float | None = None,
        body: bytes = b"",
        chunks: int = 0,
        prompt: str | None = None,
        admission: Admission | None = None,
    ) -> None:
        """Record one finished request (an error too) in the metrics and the status window."""
        tier = headers.get("x-router-tier") or (decision.tier if decision else "none")
        blocked = headers.get("x-router-guardrail") == "blocked"
        record = RequestRecord(
            at=time.time(),
            tier=tier,
            rule=decision.rule if decision else "none",
            status=status,
            seconds=seconds,
            ttft=ttft,
            fallback=headers.get("x-router-fallback"),
            reason=headers.get("x-router-fallback-reason"),
            guardrail=headers.get("x-router-guardrail-rail") if blocked else None,
        )
        tokens_out = chunks if stream else completion_tokens(body)
        tokens_in = decision.prompt_tokens if decision else 0
        self.observer.record(record, stream=stream, tokens_in=tokens_in, tokens_out=tokens_out)
        if admission is not None:
            self._refund(admission, tokens_in + tokens_out)
        fields: dict[str, object] = {
            "status": status,
            "tier": tier,
            "rule": record.rule,
            "stream": stream,
            "seconds": round(seconds, 4),
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
        }
        if ttft is not None:
            fields["ttft"] = round(ttft, 4)
        for key in ("fallback", "reason", "guardrail"):
            if getattr(record, key):
                fields[key] = getattr(record, key)
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

    async def readiness(self) -> dict[str, object]:
        probes = await asyncio.gather(*(b.probe() for b in self.backends.values()))
        tiers = {
            name: {"ready": ok, "detail": detail, "kind": b.config.kind, "url": b.config.base_url}
            for (name, b), (ok, detail) in zip(self.backends.items(), probes, strict=True)
        }
        store_ok = await self.store.ping()
        routed: dict[str, int] = {}
        if store_ok:
            try:
                routed = await self.store.read_counts(ROUTED_COUNTS)
            except StateUnavailable:
                store_ok = False
        return {
            "ready": any(t["ready"] for t in tiers.values()),
            "tiers": tiers,
            "state": {"backend": self.store.backend, "ready": store_ok, "routed": routed},
            "classifier": self.classifier.name,
            "workers": self._workers(),
            "counters": self.dispatcher.stats(),
            "config": self._config_state(),
        }

    def _config_state(self) -> dict[str, object]:
        state = self.reloader.state if self.reloader is not None else None
        return {
            "source": self.config.source,
            "version": state.version if state else 1,
            "last_error": state.last_error if state else None,
            "rejected": state.rejected if state else 0,
            "rules": [rule.name for rule in self.config.rules],
            "threshold": self.rules.threshold,
        }

    def _workers(self) -> dict[str, list[dict[str, object]]]:
        """What discovery knows of each worker tier: where, from which source, how fresh, how full."""
        if self.fleet is None:
            return {}
        found: dict[str, list[dict[str, object]]] = {}
        for tier in self.fleet.worker_tiers:
            for endpoint in self.fleet.endpoints(tier):
                t = self.fleet.fresh(endpoint)
                found.setdefault(tier, []).append(
                    {
                        "url": endpoint.base_url,
                        "source": endpoint.source,
                        "fresh": t is not None,
                        "free_bytes": t.free if t else None,
                        "total_bytes": t.total if t else None,
                        "budget": t.budget if t else None,
                        "reserved": t.reserved if t else None,
                        "queue_depth": t.queue_depth if t else None,
                        "queue_size": t.queue_size if t else None,
                    }
                )
        return found

    async def status(self) -> dict[str, object]:
        """What `/status` draws: tiers with their workers, the routing mix, latency and recent events."""
        now = time.monotonic()
        if self._ready_cache is None or now - self._ready_cache[0] > READY_CACHE_S:
            self._ready_cache = (now, await self.readiness())
        ready = self._ready_cache[1]
        workers = self._workers()
        tiers = [
            {
                "name": name,
                "kind": t["kind"],
                "ready": t["ready"],
                "detail": t["detail"],
                "workers": workers.get(name, []),
            }
            for name, t in ready["tiers"].items()  # type: ignore[attr-defined]
        ]
        return {"tiers": tiers, "counters": self.dispatcher.stats(), **self.observer.summary()}
