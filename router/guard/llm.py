"""NeMo's LLM calls (self check input/output) answered by one of the router's tiers: the small model.

An adapter for NeMo's `LLMModel` protocol over `router.dispatch.backends.TierBackend`, so the self-check calls
use the same pooled client, timeouts and error translation as everything else, and never reach the
7B. It counts its calls; the benchmark reports them per guarded request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from router.dispatch.backends import TierBackend

if TYPE_CHECKING:
    from nemoguardrails.types import ChatMessage, LLMResponse, LLMResponseChunk

DEFAULT_MAX_TOKENS = 3
"""A yes/no verdict needs a token or two; prompts.yml sets it per task."""


class TierLLM:
    def __init__(self, tier: str, default_max_tokens: int | None = DEFAULT_MAX_TOKENS) -> None:
        self.tier = tier
        self.default_max_tokens = default_max_tokens
        self._backend: TierBackend | None = None
        self.calls = 0

    def bind(self, backend: TierBackend) -> None:
        self._backend = backend

    @property
    def backend(self) -> TierBackend:
        if self._backend is None:
            raise RuntimeError(f"the self-check LLM (tier {self.tier!r}) is not bound to a backend yet")
        return self._backend

    @property
    def model_name(self) -> str:
        return self.tier

    @property
    def provider_name(self) -> str | None:
        return "tiered-router"

    @property
    def provider_url(self) -> str | None:
        return self._backend.config.base_url if self._backend else None

    async def generate_async(
        self, prompt: str | list[ChatMessage], *, stop: list[str] | None = None, **kwargs: Any
    ) -> LLMResponse:
        from nemoguardrails.types import LLMResponse

        payload: dict[str, Any] = {
            "model": self.backend.config.model,
            "messages": _messages(prompt),
            "temperature": float(kwargs.get("temperature") or 0.0),
            "stream": False,
        }
        max_tokens = kwargs.get("max_tokens") or self.default_max_tokens
        if max_tokens:
            payload["max_tokens"] = int(max_tokens)
        if stop:
            payload["stop"] = stop[:4]
        self.calls += 1
        reply = await self.backend.complete(msgspec.json.encode(payload))
        body = msgspec.json.decode(reply.body)
        choice = (body.get("choices") or [{}])[0]
        content = (choice.get("message") or {}).get("content") or ""
        return LLMResponse(content=content, model=body.get("model"), finish_reason=choice.get("finish_reason"))

    async def stream_async(
        self, prompt: str | list[ChatMessage], *, stop: list[str] | None = None, **kwargs: Any
    ) -> AsyncIterator[LLMResponseChunk]:
        from nemoguardrails.types import LLMResponseChunk

        response = await self.generate_async(prompt, stop=stop, **kwargs)
        yield LLMResponseChunk(delta_content=response.content, finish_reason=response.finish_reason)


def _messages(prompt: str | list[ChatMessage]) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(getattr(m.role, "value", m.role)), "content": m.content or ""} for m in prompt]
