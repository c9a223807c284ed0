"""The router's OpenAPI 3.1 document (`GET /openapi.json`), built from the wire-protocol structs.

The chat handlers read and validate the raw body themselves (to answer every decoding problem in the
OpenAI error shape), so the request and response schemas come straight from the msgspec structs the
router decodes and encodes with, the same source of truth, rather than from handler signatures.
"""

from __future__ import annotations

from typing import Any

import msgspec

from router.wire.completions import CompletionRequest, TextCompletion
from router.wire.embeddings import EmbeddingList, EmbeddingRequest
from router.wire.protocol import ChatCompletion, ChatCompletionRequest, ErrorBody, ModelCard, ModelList, RouteDecision
from router.wire.responses import ResponseObject, ResponsesRequest

ERRORS = {
    "400": "invalid request (malformed JSON, wrong types, limits)",
    "401": "missing or invalid API key",
    "403": "the key may not use this tier, or forcing a tier is off",
    "404": "unknown model or tier",
    "413": "request body too large (as sent, or once decoded)",
    "415": "a request body Content-Encoding other than gzip or deflate",
    "429": "rate limit reached (with Retry-After)",
    "502": "the tier answered badly",
    "503": "no tier could take the request",
    "504": "the tier did not answer in time",
    "505": "a stream asked for over HTTP/1.0 (streams need HTTP/1.1)",
}


def openapi_document(version: str) -> dict[str, Any]:
    structs = [ChatCompletionRequest, ChatCompletion, ErrorBody, RouteDecision, ModelList, ModelCard]
    more = [CompletionRequest, TextCompletion, EmbeddingRequest, EmbeddingList, ResponsesRequest, ResponseObject]
    found, schemas = msgspec.json.schema_components([*structs, *more], ref_template="#/components/schemas/{name}")
    (request, completion, error, decision, models, model), translated = found[:6], found[6:]
    errors = {
        code: {"description": text, "content": {"application/json": {"schema": error}}} for code, text in ERRORS.items()
    }
    body = {"required": True, "content": {"application/json": {"schema": request}}}
    security: list[dict[str, list[str]]] = [{"bearer": []}]
    paths = {
        "/v1/chat/completions": {
            "post": {
                "operationId": "createChatCompletion",
                "summary": "A chat completion, routed to the cheapest tier that can handle it",
                "requestBody": body,
                "security": security,
                "responses": {
                    "200": {
                        "description": "the completion, or an SSE stream of chunks when stream is true",
                        "content": {
                            "application/json": {"schema": completion},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **errors,
                },
            }
        },
        **translated_paths(translated, errors, security),
        "/v1/route": {
            "post": {
                "operationId": "explainRoute",
                "summary": "The routing decision for a request, without generating",
                "requestBody": body,
                "security": security,
                "responses": {
                    "200": {"description": "the decision", "content": {"application/json": {"schema": decision}}},
                    **errors,
                },
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "security": security,
                "responses": {
                    "200": {"description": "models", "content": {"application/json": {"schema": models}}},
                    **errors,
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "operationId": "retrieveModel",
                "security": security,
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "the model", "content": {"application/json": {"schema": model}}},
                    **errors,
                },
            }
        },
        "/health": {"get": {"operationId": "health", "responses": {"200": {"description": "alive"}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "tiered-router", "version": version},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def translated_paths(
    schemas: tuple[dict[str, Any], ...], errors: dict[str, Any], security: list[dict[str, list[str]]]
) -> dict[str, Any]:
    """Text completions, embeddings and responses: each a request schema and a response schema."""
    text_request, text, embed_request, embeddings, responses_request, response = schemas
    operations = [
        (
            "/v1/completions",
            "createCompletion",
            "A text completion, served as a chat request of one user message",
            text_request,
            text,
            "the completion, or an SSE stream of text_completion chunks when stream is true",
        ),
        (
            "/v1/embeddings",
            "createEmbedding",
            "Embeddings by all-minilm-l6-v2, served in the router",
            embed_request,
            embeddings,
            "the embeddings",
        ),
        (
            "/v1/responses",
            "createResponse",
            "A stateless response, routed like a chat completion",
            responses_request,
            response,
            "the response, or an SSE stream of Responses events when stream is true",
        ),
    ]
    paths: dict[str, Any] = {}
    for path, operation, summary, request, answer, described in operations:
        content: dict[str, Any] = {"application/json": {"schema": answer}}
        if path != "/v1/embeddings":
            content["text/event-stream"] = {"schema": {"type": "string"}}
        paths[path] = {
            "post": {
                "operationId": operation,
                "summary": summary,
                "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                "security": security,
                "responses": {"200": {"description": described, "content": content}, **errors},
            }
        }
    return paths
