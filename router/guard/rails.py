"""The guard: one NeMo Guardrails `LLMRails`, built at start-up, whose input and output rails we run.

Only rails run here (`LLMRails.check_async` with a rail type): NeMo never generates the answer. A rail
that raises or runs past `timeout_s` counts as a block when `on_error: block` (the default).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from router.config import Config, ConfigError, GuardrailsConfig
from router.guard.data import GROUPS, load_guard_data
from router.guard.llm import TierLLM
from router.guard.patterns import PatternSet
from router.guard.similarity import DisallowedSimilarity

if TYPE_CHECKING:
    from nemoguardrails import LLMRails

    from router.backends import TierBackend

log = logging.getLogger(__name__)

ERROR_RAIL = "guardrails error"
OUTPUT_GROUPS = ("secrets", "pii")


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
    ) -> None:
        self.settings = settings
        self.rails = rails
        self.patterns = patterns
        self.similarity = similarity
        self.llm = llm
        self._has_input = bool(rails.config.rails.input.flows)
        self._has_output = bool(rails.config.rails.output.flows)

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
        if similarity is not None:
            similarity.load()
        llm = TierLLM(settings.self_check_tier)
        try:
            rails = LLMRails(rails_config, llm=llm)
        except Exception as exc:
            raise ConfigError(str(directory), "(guardrails config)", f"{type(exc).__name__}: {exc}") from exc
        guard = cls(settings, rails, patterns, similarity, llm)
        rails.register_action(guard._match_patterns, "match_patterns")
        rails.register_action(guard._similar_to_disallowed, "similar_to_disallowed")
        log.info(
            "guardrails loaded from %s: input %s, output %s",
            directory,
            rails_config.rails.input.flows,
            rails_config.rails.output.flows,
        )
        return guard

    def bind(self, backends: Mapping[str, TierBackend]) -> None:
        self.llm.bind(backends[self.settings.self_check_tier])

    async def check_input(self, user_text: str) -> GuardVerdict:
        if not self._has_input or not user_text.strip():
            return PASSED
        return await self._check([{"role": "user", "content": user_text}], "input")

    async def check_output(self, user_text: str, output: str) -> GuardVerdict:
        if not self._has_output or not output.strip():
            return PASSED
        messages = [{"role": "user", "content": user_text}, {"role": "assistant", "content": output}]
        return await self._check(messages, "output")

    def hold_from(self, output: str) -> int:
        """Where output that a pattern rail could still block begins (streams keep it back)."""
        return min(self.patterns[g].hold_from(output) for g in OUTPUT_GROUPS)

    async def _check(self, messages: list[dict[str, Any]], kind: str) -> GuardVerdict:
        from nemoguardrails.rails.llm.options import RailStatus, RailType

        started = time.perf_counter()
        rail_type = RailType.INPUT if kind == "input" else RailType.OUTPUT
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                result = await self.rails.check_async(messages, rail_types=[rail_type])
        except Exception as exc:  # fail closed (or open, if configured) on any rail failure
            log.warning("%s rails failed (%s: %s); on_error=%s", kind, type(exc).__name__, exc, self.settings.on_error)
            blocked = self.settings.on_error == "block"
            return GuardVerdict(blocked, ERROR_RAIL if blocked else None, time.perf_counter() - started)
        seconds = time.perf_counter() - started
        if result.status == RailStatus.BLOCKED:
            return GuardVerdict(True, result.rail or f"{kind} rails", seconds)
        return GuardVerdict(False, None, seconds)

    async def _match_patterns(self, group: str = "", text: str | None = None) -> bool:
        patterns = self.patterns.get(group)
        if patterns is None:
            raise ValueError(f"unknown pattern group {group!r} (known: {', '.join(GROUPS)})")
        return bool(text) and patterns.first_match(text or "") is not None

    async def _similar_to_disallowed(self, text: str | None = None) -> bool:
        if self.similarity is None:
            raise ValueError("the similarity rail is used but custom_data.similarity is not configured")
        return await self.similarity.check(text or "")
