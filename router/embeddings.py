"""`POST /v1/embeddings`, served in the router by the all-MiniLM-L6-v2 encoder the embedding classifier and the
guardrails use (loaded on the first call, in a worker thread, encoding one batch at a time off the event loop), or
sent on to the tier `embeddings.tiers` names for the requested model."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol

import anyio
import msgspec

from router.core.config import EmbeddingsConfig
from router.decide.access import Caller
from router.dispatch.backends import TierBackend
from router.wire.decode import parse_body
from router.wire.embeddings import (
    EMBEDDING_MODEL,
    Embedding,
    EmbeddingList,
    EmbeddingUsage,
    decode_embedding_request,
)
from router.wire.protocol import encode

if TYPE_CHECKING:
    import numpy as np


class TextEncoder(Protocol):
    """What embeddings are made with: `router.decide.classify.embedding.MiniLMEncoder`, or a fake in tests."""

    def encode(self, texts: list[str]) -> tuple[np.ndarray, list[int]]: ...


def load_minilm() -> TextEncoder:
    """The fp32 encoder (the classifier's int8 one is tuned for latency; clients comparing vectors want the
    model's own embeddings)."""
    from router.decide.classify.embedding import MiniLMEncoder

    return MiniLMEncoder(threads=1, int8=False)


class ModelOnly(msgspec.Struct):
    """What the router reads of a request it sends on to a tier: the model name, to pick the tier."""

    model: str


class EmbeddingService:
    """Owns the encoder (loaded lazily, once); the app's lifespan creates it and drops it on shutdown."""

    def __init__(
        self,
        authenticate: Callable[[str | None], Awaitable[Caller | None]],
        config: Callable[[], EmbeddingsConfig] = EmbeddingsConfig,
        backends: Mapping[str, TierBackend] | None = None,
        load: Callable[[], TextEncoder] = load_minilm,
        admit: Callable[[Caller | None, int], Awaitable[object]] | None = None,
    ) -> None:
        self._authenticate = authenticate
        self._admit = admit
        """Counts a request and its input's estimated tokens against the key's limits (the pipeline's)."""
        self._config = config
        """Read on each request, so a reloaded config (`embeddings.aliases`, `embeddings.tiers`) applies at once."""
        self._backends = backends or {}
        self._load = load
        self._encoder: TextEncoder | None = None
        self._limiter = anyio.CapacityLimiter(1)
        """One load, then one batch at a time: the encoder's threads are the router's CPU."""

    async def embeddings(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        caller = await self._authenticate(headers.get("authorization"))
        if self._admit is not None:
            await self._admit(caller, len(body) // 4)  # the body bounds what the input can hold
        config = self._config()
        model = parse_body(body, _MODEL_DECODER.decode, "embeddings request").model
        tier = config.tiers.get(model)
        if tier is not None:
            if caller is not None:
                caller.allowed([tier])
            reply = await self._backends[tier].embeddings(body)
            return reply.body
        request = parse_body(body, decode_embedding_request, "embeddings request")
        texts = request.texts(config.aliases, config.tiers)
        vectors, lengths = await anyio.to_thread.run_sync(self._encode, texts, limiter=self._limiter)
        data = [
            Embedding(i, base64.b64encode(row.astype("<f4").tobytes()).decode("ascii"))
            if request.encoding_format == "base64"
            else Embedding(i, row.tolist())
            for i, row in enumerate(vectors)
        ]
        tokens = sum(lengths)
        return encode(EmbeddingList(data, EMBEDDING_MODEL, EmbeddingUsage(tokens, tokens)))

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        if self._encoder is None:
            self._encoder = self._load()
        return self._encoder.encode(texts)

    def close(self) -> None:
        self._encoder = None


_MODEL_DECODER = msgspec.json.Decoder(ModelOnly)
