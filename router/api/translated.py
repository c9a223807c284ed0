"""The OpenAI endpoints beyond chat: text completions and responses (served through the chat pipeline) and
embeddings (served in the router). Each decodes, calls one service, and encodes."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Stream

from router.api.endpoints import JSON, reply
from router.api.framing import refuse_stream_over_http10
from router.embeddings import EmbeddingService
from router.translate import TranslatingService


@post("/v1/completions", status_code=200)
async def completions(
    request: Request[Any, Any, State], translator: NamedDependency[TranslatingService]
) -> Response[bytes] | Stream:
    body = await request.body()
    refuse_stream_over_http10(request.scope, body)
    return reply(await translator.completions(body, request.headers))


@post("/v1/embeddings", status_code=200)
async def embeddings(request: Request[Any, Any, State], embedder: NamedDependency[EmbeddingService]) -> Response[bytes]:
    return Response(await embedder.embeddings(await request.body(), request.headers), media_type=JSON)


@post("/v1/responses", status_code=200)
async def responses(
    request: Request[Any, Any, State], translator: NamedDependency[TranslatingService]
) -> Response[bytes] | Stream:
    body = await request.body()
    refuse_stream_over_http10(request.scope, body)
    return reply(await translator.responses(body, request.headers))
