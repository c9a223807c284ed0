"""The guard: one NeMo Guardrails `LLMRails`, built at start-up, whose input and output rails we run.

Only rails run here (`LLMRails.check_async` with a rail type): NeMo never generates the answer. A rail
that raises or runs past `timeout_s` counts as a block when `on_error: block` (the default).

What a check costs is NeMo's Colang 1.0 runtime, not our checks (microseconds for the patterns): every
event of a check is matched against every loaded flow, and `LLMRails` loads all ~80 flows of NeMo's
library (ActiveFence, Llama Guard, ...) whether configured or not. So the LLM-free checks run as one
action per direction (`llm_free_checks`), and at start-up the runtime's flow table is pruned to the flows
the configured rails can reach (`prune_flows`, on by default; measured in bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from router.core.config import Config, ConfigError, GuardrailsConfig
from router.guard.classifier import (
    SHIPPED_WEIGHTS,
    AttackClassifier,
    EmbeddedWindows,
    encoder_deltas,
    load_weights,
)
from router.guard.compiled import CompiledRail, Direction, compile_flow
from router.guard.data import GROUPS, GuardData, load_guard_data
from router.guard.llm import TierLLM
from router.guard.ngrams import SHIPPED_NGRAMS, NgramModel, NgramRail
from router.guard.normalise import Normalised, prepare, visible
from router.guard.patterns import PatternSet
from router.guard.similarity import DisallowedSimilarity
from router.guard.texts import client_texts

if TYPE_CHECKING:
    from nemoguardrails import LLMRails

    from router.dispatch.backends import TierBackend
    from router.wire.protocol import ChatCompletionRequest

log = logging.getLogger(__name__)

ERROR_RAIL = "guardrails error"
OUTPUT_OVERLAP = 4096
"""A stream's output rails re-read this much already-checked text with each new piece: a secret or a card number
split across pieces is still seen whole (no pattern match is longer)."""
OUTPUT_GROUPS = ("secrets", "pii")
CHECK_RAILS = {
    "injection": "check prompt injection",
    "jailbreak": "check jailbreak",
    "evasion": "check encoding evasion",
    "disallowed": "check disallowed request",
    "ngrams": "check multilingual n-grams",
    "classifier": "check attack classifier",
    "similarity": "check disallowed similarity",
    "secrets": "check secrets",
    "pii": "check pii",
}
"""The checks `llm_free_checks(checks="...")` runs, and the rail name a hit is reported under."""
CHECKS_ACTION = "llm_free_checks"
_hits: contextvars.ContextVar[list[str]] = contextvars.ContextVar("guard_hits")
"""The checks that hit during the current `_check` (set there, appended to by the action)."""


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    blocked: bool
    rail: str | None = None
    seconds: float = 0.0


PASSED = GuardVerdict(False)


class Guard:
    def __init__(
        self,
        settings: GuardrailsConfig,
        rails: LLMRails,
        patterns: dict[str, PatternSet],
        similarity: DisallowedSimilarity | None,
        llm: TierLLM,
        compiled: list[CompiledRail] | None = None,
        classifier: AttackClassifier | None = None,
        ngrams: NgramRail | None = None,
    ) -> None:
        self.settings = settings
        self.classifier = classifier
        """None when `custom_data.classifier.weights: off` (the `classifier` check then passes everything)."""
        self.ngrams = ngrams
        """None when `custom_data.ngrams` is unset or `weights: off` (the `ngrams` check then passes everything)."""
        self.rails = rails
        self.patterns = patterns
        self.similarity = similarity
        self.llm = llm
        self.compiled: dict[Direction, list[CompiledRail]] = {"input": [], "output": []}
        for rail in compiled or []:
            self.compiled[rail.direction].append(rail)
        self.interpreted: dict[Direction, list[str]] = {
            "input": list(rails.config.rails.input.flows),
            "output": list(rails.config.rails.output.flows),
        }
        """The flows NeMo's runtime runs (everything not compiled)."""
        self._limiter = anyio.CapacityLimiter(2)
        """Checks running at once, in worker threads (the machine's cores, not the event loop)."""

    @classmethod
    def load(cls, config: Config) -> Guard:
        """Load the NeMo config, the pattern data and the encoder (blocking: a second or two).

        Raises `ConfigError` naming the guardrails directory for any problem in it. The self-check LLM is
        bound to its tier's backend later (`bind`), once the app's HTTP client exists.
        """
        os.environ["NEMO_GUARDRAILS_NO_USAGE_STATS"] = "1"  # before nemoguardrails is imported
        from nemoguardrails import LLMRails, RailsConfig

        settings = config.guardrails
        directory = config.resolve_path(settings.path)
        if not (directory / "config.yml").is_file():
            raise ConfigError(config.source, "guardrails.path", f"no NeMo Guardrails config.yml in {directory}")
        try:
            rails_config = RailsConfig.from_path(str(directory))
        except Exception as exc:  # NeMo raises many kinds (YAML, Colang, pydantic): all mean a bad config
            raise ConfigError(str(directory), "(guardrails config)", f"{type(exc).__name__}: {exc}") from exc
        data, disallowed, allowed = load_guard_data(dict(rails_config.custom_data or {}), directory)
        patterns = {g: PatternSet(g, data.patterns.group(g), str(directory)) for g in GROUPS}
        similarity = DisallowedSimilarity(data.similarity, disallowed, allowed) if data.similarity else None
        classifier = _classifier(data, directory)
        ngrams = _ngrams(data, directory)
        if similarity is not None or classifier is not None:
            from router.decide.classify.embedding import MiniLMEncoder

            deltas = classifier.deltas if classifier is not None else None
            try:
                encoder = MiniLMEncoder(deltas=deltas)  # one encoder, shared by both embedding rails
            except ValueError as exc:  # encoder deltas that do not fit
                raise ConfigError(str(directory), "custom_data.classifier.weights", str(exc)) from exc
            if similarity is not None:
                similarity.load(encoder)
            if classifier is not None:
                classifier.load(encoder)
        llm = TierLLM(settings.self_check_tier)
        own_flows = {flow["id"] for flow in rails_config.flows}  # LLMRails adds NeMo's flows to this list
        compiled = _compile(rails_config) if settings.compile_flows else []
        try:
            rails = LLMRails(rails_config, llm=llm)
        except Exception as exc:
            raise ConfigError(str(directory), "(guardrails config)", f"{type(exc).__name__}: {exc}") from exc
        _validate_checks(
            rails, str(directory), similarity is not None, data.classifier is not None, data.ngrams is not None
        )
        pruned = prune_flows(rails, own_flows) if settings.prune_flows else 0
        guard = cls(settings, rails, patterns, similarity, llm, compiled, classifier, ngrams)
        rails.register_action(guard._llm_free_checks, CHECKS_ACTION)
        log.info(
            "guardrails loaded from %s: compiled %s; through NeMo: input %s, output %s (%d unused flows pruned)",
            directory,
            [rail.flow for rail in compiled],
            guard.interpreted["input"],
            guard.interpreted["output"],
            pruned,
        )
        return guard

    def bind(self, backends: Mapping[str, TierBackend]) -> None:
        self.llm.bind(backends[self.settings.self_check_tier])

    async def check_input(self, texts: str | Sequence[str]) -> GuardVerdict:
        """Every input rail: the compiled (LLM-free) ones over each piece of client text, then the flows NeMo's
        runtime runs (e.g. `self check input`) over all of it joined."""
        pieces = [texts] if isinstance(texts, str) else list(texts)
        verdict = await self.screen(pieces)
        if verdict.blocked or not self.interpreted["input"]:
            return verdict
        rest = await self.check_rest(pieces)
        return GuardVerdict(rest.blocked, rest.rail, verdict.seconds + rest.seconds)

    async def check_request(self, request: ChatCompletionRequest) -> GuardVerdict:
        """Every input rail over all of a request's client text (every role, `name`, tool-call arguments, a
        prefill: router/guard/texts.py), as a hop to a guarded tier gets them. `rail` names the rail that blocked
        (its `CHECK_RAILS` name). What `tiered-router eval guard` and benchmarks call; needs no HTTP."""
        return await self.check_input([piece.text for piece in client_texts(request)])

    async def check_rest(self, texts: Sequence[str]) -> GuardVerdict:
        """The input flows NeMo's runtime runs (none by default), over all the client text joined."""
        if not self.interpreted["input"]:
            return PASSED
        joined = "\n\n".join(texts)
        messages = [{"role": "user", "content": joined}]
        return await self._check("input", lambda: self._timed(self._run_interpreted("input", messages)))

    async def screen(self, texts: Sequence[str]) -> GuardVerdict:
        """The compiled input rails alone (LLM-free: what every request gets, whatever its tier)."""
        if not any(text.strip() for text in texts):
            return PASSED
        checks = [check for rail in self.compiled["input"] for check in rail.checks]
        if not checks:
            return PASSED
        return await self._check("input", lambda: self._in_thread(checks, texts))

    async def check_output(self, user_text: str, output: str, *, start: int = 0) -> GuardVerdict:
        """The output rails on an answer. `start`: what a stream has already had checked; the compiled rails read
        only from there (less the longest match they could still complete), so a stream costs linear time."""
        if not output.strip():
            return PASSED
        checks = [check for rail in self.compiled["output"] for check in rail.checks]
        tail = output[max(0, start - OUTPUT_OVERLAP) :]
        messages = [{"role": "user", "content": user_text}, {"role": "assistant", "content": output}]

        async def run() -> str | None:
            rail = await self._in_thread(checks, [tail]) if checks else None
            if rail is None and self.interpreted["output"]:
                rail = await self._timed(self._run_interpreted("output", messages))
            return rail

        if not checks and not self.interpreted["output"]:
            return PASSED
        return await self._check("output", run)

    def hold_from(self, output: str) -> int:
        """Where output that a pattern rail could still block begins (streams keep it back). Read as the output
        rails read it, without zero-width characters; only its last `OUTPUT_OVERLAP` characters, where a match
        still open at the end can start."""
        base = max(0, len(output) - OUTPUT_OVERLAP)
        text, positions = visible(output[base:])
        hold = min(self.patterns[g].hold_from(text) for g in OUTPUT_GROUPS)
        if hold >= len(text):
            return len(output)
        return base + (positions[hold] if positions is not None else hold)

    async def _check(self, kind: Direction, run: Callable[[], Awaitable[str | None]]) -> GuardVerdict:
        """Run rails; a failure, a rail past `timeout_s` included, blocks (or passes, with `on_error: allow`)."""
        started = time.perf_counter()
        try:
            rail = await run()
        except Exception as exc:  # fail closed (or open, if configured) on any rail failure
            log.warning("%s rails failed (%s: %s); on_error=%s", kind, type(exc).__name__, exc, self.settings.on_error)
            blocked = self.settings.on_error == "block"
            return GuardVerdict(blocked, ERROR_RAIL if blocked else None, time.perf_counter() - started)
        return GuardVerdict(rail is not None, rail, time.perf_counter() - started)

    async def _timed(self, rails: Awaitable[str | None]) -> str | None:
        async with asyncio.timeout(self.settings.timeout_s):
            return await rails

    async def _in_thread(self, checks: Sequence[str], texts: Sequence[str]) -> str | None:
        """`scan` in a worker thread: the event loop never runs a rail (a crafted prompt costs the regexes
        milliseconds, the encoder more). Two at once; `timeout_s` counts from when a check starts, not while it
        waits for a thread: waiting behind other requests is load, not a rail failing (eight long texts at once
        were blocked by their wait alone, bench/RESULTS.md). A request that gives up while it waits (its client
        went) leaves the queue."""
        async with self._limiter:
            hit = await self._timed(anyio.to_thread.run_sync(self.scan, checks, texts))
        return CHECK_RAILS[hit] if hit is not None else None

    async def _run_interpreted(self, kind: Direction, messages: list[dict[str, Any]]) -> str | None:
        from nemoguardrails.rails.llm.options import RailStatus, RailType

        hits: list[str] = []
        _hits.set(hits)  # a list, so the action's appends are seen here even from a copied context
        rail_type = RailType.INPUT if kind == "input" else RailType.OUTPUT
        result = await self.rails.check_async(messages, rail_types=[rail_type])
        if result.status != RailStatus.BLOCKED:
            return None
        return CHECK_RAILS[hits[-1]] if hits else (result.rail or f"{kind} rails")

    def scan(self, checks: Sequence[str], texts: Sequence[str]) -> str | None:
        """The first of `checks` that flags any of `texts`, cheapest first as listed. Blocking: run it in a
        thread. Each text is read up to `max_scan_chars`, its start and its end. Input checks read each text
        normalised, and its decoded variants (router/guard/normalise.py); output checks read it without
        zero-width and control characters."""
        bounded = [_bounded(text, self.settings.max_scan_chars) for text in texts if text.strip()]
        prepared: list[Normalised] | None = None
        shown: list[str] | None = None
        embedded: EmbeddedWindows | None = None  # both embedding rails read one encoder pass
        embedded_texts: list[str] = []  # what `embedded` holds, in order
        for check in checks:
            if check in OUTPUT_GROUPS:
                shown = shown if shown is not None else [visible(text)[0] for text in bounded]
                hit = any(self.patterns[check].first_match(text) is not None for text in shown)
                if hit:
                    return check
                continue
            prepared = prepared if prepared is not None else [prepare(text) for text in bounded]
            if check == "ngrams":
                readings = [c for p in prepared for c in p.for_embedding]
                hit = self.ngrams is not None and self.ngrams.blocks_texts(readings)
            elif check in ("classifier", "similarity"):
                if check == "classifier" and self.classifier is None:
                    continue  # switched off
                if embedded is None:
                    embedded_texts = [c for p in prepared for c in p.for_embedding if c.strip()]
                    embedded = self._embed(embedded_texts)
                hit = self._embedding_hit(check, embedded, embedded_texts)
            else:
                hit = any(self.patterns[check].first_match(c) is not None for p in prepared for c in p.candidates)
            if hit:
                return check
        return None

    def _embed(self, texts: list[str]) -> EmbeddedWindows:
        if not texts:
            import numpy as np

            return EmbeddedWindows(np.zeros((0, 0)), [])
        if self.classifier is not None:
            return self.classifier.embed(texts)
        assert self.similarity is not None, "validated at load"
        return self.similarity.embed(texts)

    def _embedding_hit(self, check: str, embedded: EmbeddedWindows, readings: Sequence[str]) -> bool:
        """`readings`: the texts `embedded` holds, in order. The classifier's verdict on one that is not English is
        judged with the n-gram rail, which reads the languages MiniLM does not (`NgramRail.judge`)."""
        if not embedded.spans:
            return False
        if check == "classifier":
            if self.classifier is None:
                return False
            verdicts = self.classifier.verdicts(embedded)
            if self.ngrams is None:
                return any(blocks for blocks, _ in verdicts)
            judge = self.ngrams.judge
            return any(judge(text, *verdict) for verdict, text in zip(verdicts, readings, strict=True))
        assert self.similarity is not None, "validated at load"
        return self.similarity.blocks_texts(embedded)

    async def first_hit(self, checks: Sequence[str], text: str) -> str | None:
        """The first of `checks` that flags `text` (the action's logic), off the event loop."""
        if not text.strip():
            return None
        return await anyio.to_thread.run_sync(self.scan, checks, [text], limiter=self._limiter)

    async def _llm_free_checks(self, checks: str = "", text: str | None = None) -> bool:
        hit = await self.first_hit(_split(checks), text or "")
        if hit is not None:
            hits = _hits.get(None)
            if hits is not None:
                hits.append(hit)
        return hit is not None


def _bounded(text: str, limit: int) -> str:
    """At most `limit` characters: the start and the end, where a hidden instruction after padding sits."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n{text[-half:]}"


def _classifier(data: GuardData, directory: Path) -> AttackClassifier | None:
    settings = data.classifier
    if settings is None or settings.weights in (False, "off"):
        return None
    if settings.weights is True or settings.weights == "shipped":
        path = SHIPPED_WEIGHTS
    else:
        path = directory / str(settings.weights)
    weights = load_weights(path, str(directory))
    return AttackClassifier(weights, settings.threshold, encoder_deltas(weights, path))


def _ngrams(data: GuardData, directory: Path) -> NgramRail | None:
    settings = data.ngrams
    if settings is None or settings.weights in (False, "off"):
        return None
    shipped = settings.weights is True or settings.weights == "shipped"
    path = SHIPPED_NGRAMS if shipped else directory / str(settings.weights)
    return NgramRail(NgramModel.load(path, str(directory)), settings.threshold, settings.agreement)


def _compile(rails_config: Any) -> list[CompiledRail]:
    """Take the flows of the compilable shape out of NeMo's rail lists; the router runs them directly."""
    flows = {flow["id"]: flow for flow in rails_config.flows}
    compiled: list[CompiledRail] = []
    for direction in ("input", "output"):
        section = getattr(rails_config.rails, direction)
        remaining = []
        for name in section.flows:
            flow = flows.get(name)
            rail = compile_flow(name, flow["elements"], CHECKS_ACTION) if flow is not None else None
            if rail is not None and rail.direction == direction:
                compiled.append(rail)
            else:
                remaining.append(name)
        section.flows = remaining
    return compiled


def _split(checks: str) -> list[str]:
    return [c.strip() for c in checks.split(",") if c.strip()]


def _validate_checks(
    rails: LLMRails, source: str, has_similarity: bool, has_classifier: bool, has_ngrams: bool = False
) -> None:
    """Every `llm_free_checks(checks=...)` in the Colang flows names known checks (a typo fails here)."""
    for flow in rails.runtime.flow_configs.values():
        for element in flow.elements:
            if element.get("_type") != "run_action" or element.get("action_name") != CHECKS_ACTION:
                continue
            checks = element.get("action_params", {}).get("checks")
            where = f"flow {flow.id!r}: {CHECKS_ACTION}(checks=...)"
            if not isinstance(checks, str) or not _split(checks):
                raise ConfigError(source, where, f'give the checks as a string, e.g. "{",".join(CHECK_RAILS)}"')
            unknown = [c for c in _split(checks) if c not in CHECK_RAILS]
            if unknown:
                raise ConfigError(source, where, f"unknown checks {unknown} (known: {', '.join(CHECK_RAILS)})")
            if "similarity" in _split(checks) and not has_similarity:
                raise ConfigError(source, where, "the similarity check needs custom_data.similarity")
            if "classifier" in _split(checks) and not has_classifier:
                raise ConfigError(source, where, "the classifier check needs custom_data.classifier")
            if "ngrams" in _split(checks) and not has_ngrams:
                raise ConfigError(source, where, "the ngrams check needs custom_data.ngrams")


def prune_flows(rails: LLMRails, own_flows: set[str]) -> int:
    """Drop NeMo library flows the configured rails cannot reach from the runtime's flow table.

    Colang 1.0 matches each event of a check against every flow it holds, so unused library flows cost
    time on every request. Kept: the config's own flows, NeMo's core flows (llm_flows.co), the flows
    the rails list, and every flow those call. Returns how many were dropped.
    """
    table = rails.runtime.flow_configs
    settings = rails.config.rails
    listed = [*settings.input.flows, *settings.output.flows, *settings.retrieval.flows]
    reachable: set[str] = set()
    pending = [flow.split(" $")[0].strip() for flow in listed]
    while pending:
        flow_id = pending.pop()
        if flow_id in reachable or flow_id not in table:
            continue
        reachable.add(flow_id)
        for element in table[flow_id].elements:
            name = element.get("flow_name")
            if element.get("_type") == "flow" and isinstance(name, str) and not name.startswith("$"):
                pending.append(name)
    dropped = [
        flow_id
        for flow_id, flow in table.items()
        if flow_id not in own_flows and flow_id not in reachable and not _is_core(flow)
    ]
    for flow_id in dropped:
        del table[flow_id]
    return len(dropped)


def _is_core(flow: Any) -> bool:
    elements = flow.elements
    return bool(elements) and elements[0].get("_source_mapping", {}).get("filename") == "llm_flows.co"
