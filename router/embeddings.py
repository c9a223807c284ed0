"""`POST /v1/embeddings`, served in the router by the all-MiniLM-L6-v2 encoder the embedding classifier and the
guardrails use: loaded on the first call (in a worker thread), encoding one batch at a time off the event loop."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Protocol

import anyio

from router.decide.access import Caller
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


class EmbeddingService:
    """Owns the encoder (loaded lazily, once); the app's lifespan creates it and drops it on shutdown."""

    def __init__(
        self,
        authenticate: Callable[[str | None], Awaitable[Caller | None]],
        aliases: Callable[[], Collection[str]] = tuple,
        load: Callable[[], TextEncoder] = load_minilm,
    ) -> None:
        self._authenticate = authenticate
        self._aliases = aliases
        """Read on each request, so a reloaded config (`embeddings.aliases`) applies at once."""
        self._load = load
        self._encoder: TextEncoder | None = None
        self._limiter = anyio.CapacityLimiter(1)
        """One load, then one batch at a time: the encoder's threads are the router's CPU."""

    async def embeddings(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        await self._authenticate(headers.get("authorization"))
        request = parse_body(body, decode_embedding_request, "embeddings request")
        texts = request.texts(self._aliases())
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
