"""The embeddings wire format (`POST /v1/embeddings`): the request, the response, and their limits."""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from router.wire.errors import InvalidRequest, UnknownModel

EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_DIMS = 384
MAX_INPUTS = 256
"""Texts per request; each is one row of one batch through the encoder."""
MAX_INPUT_CHARS = 32_000
"""Characters per text (the encoder reads only its first 256 word pieces; the rest is truncated, as
sentence-transformers does, and still counted in `usage`)."""


class EmbeddingRequest(msgspec.Struct, omit_defaults=True):
    """`POST /v1/embeddings`; unknown fields are ignored, as OpenAI does. Token-id inputs are refused (400)."""

    input: str | Annotated[list[str], Meta(min_length=1)]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | UnsetType | None = UNSET
    user: str | UnsetType = UNSET

    def texts(self, aliases: Collection[str] = (), elsewhere: Collection[str] = ()) -> list[str]:
        """The input as a list, within the limits (a 400 naming `input` or `dimensions`; a 404 for a model that is
        neither ours nor one of its configured `aliases`; `elsewhere`: the models tiers serve, named in the 404)."""
        if self.model != EMBEDDING_MODEL and self.model not in aliases:
            served = ", ".join(repr(m) for m in [EMBEDDING_MODEL, *aliases, *elsewhere])
            raise UnknownModel(
                f"The model '{self.model}' does not exist; embeddings are served for {served}", param="model"
            )
        if self.dimensions not in (UNSET, None, EMBEDDING_DIMS):
            raise InvalidRequest(
                f"dimensions is {self.dimensions}; '{EMBEDDING_MODEL}' gives {EMBEDDING_DIMS}", param="dimensions"
            )
        texts = [self.input] if isinstance(self.input, str) else self.input
        if len(texts) > MAX_INPUTS:
            raise InvalidRequest(f"input holds {len(texts)} texts; at most {MAX_INPUTS} are accepted", param="input")
        for index, text in enumerate(texts):
            if not text:
                raise InvalidRequest(f"input[{index}] is empty", param="input")
            if len(text) > MAX_INPUT_CHARS:
                raise InvalidRequest(
                    f"input[{index}] holds {len(text)} characters; at most {MAX_INPUT_CHARS} are accepted",
                    param="input",
                )
        return texts


class Embedding(msgspec.Struct):
    index: int
    embedding: list[float] | str
    """Floats, or base64 of little-endian float32s (`encoding_format: base64`)."""
    object: Literal["embedding"] = "embedding"


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: Literal["list"] = "list"


def decode_embedding_request(body: bytes) -> EmbeddingRequest:
    return _REQUEST_DECODER.decode(body)


_REQUEST_DECODER = msgspec.json.Decoder(EmbeddingRequest)
