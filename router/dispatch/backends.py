"""Tier backends: OpenAI-compatible HTTP servers (our workers or a remote API) behind one interface.

All HTTP details live here. httpx exceptions and upstream error statuses are translated into
`router.wire.errors.UpstreamError`s naming the tier; callers see only replies, streams and those errors.
The remote API key is read from the environment variable the config names, sent only as the
`Authorization` header, and never logged or put in an error.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
import httpx
import msgspec

from router.core.config import TierConfig
from router.core.logs import REQUEST_ID_HEADER, request_id
from router.core.workers import CONTEXT_LENGTH_EXCEEDED
from router.dispatch.transport import FastHTTPTransport
from router.wire.errors import (
    RelayedClientError,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

RELAYED_CLIENT_ERRORS = frozenset({400, 413, 422})
"""Upstream statuses that blame the client's request; relayed as they are."""


class ContextLengthExceeded(UpstreamError):
    """The tier answered 400 `context_length_exceeded`: this tier cannot take the prompt, another of the chain may.

    Not relayed (the dispatcher moves on), not retried, and no failure for the breaker: the tier answered.
    """

    status_code = 400
    error_type = "invalid_request_error"
    code = CONTEXT_LENGTH_EXCEEDED


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    status: int
    body: bytes
    headers: dict[str, str]


class UpstreamStream:
    """An open upstream SSE response: iterate `chunks()` once, then it closes itself."""

    def __init__(self, backend: TierBackend, response: httpx.Response, deadline: float) -> None:
        self._backend = backend
        self._response = response
        self._deadline = deadline

    async def chunks(self) -> AsyncIterator[bytes]:
        """The raw body as it arrives; a gap over `between_chunks` or a stream past `total` is a timeout."""
        try:
            with self._backend.translating():
                async for chunk in self._response.aiter_raw():
                    if chunk:
                        yield chunk
                    if time.monotonic() > self._deadline:
                        raise UpstreamTimeout(self._backend.name, "the stream ran past its total timeout")
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


class TierBackend:
    """One tier: an OpenAI-compatible base URL, the model name it expects, and how long to wait."""

    def __init__(
        self,
        name: str,
        config: TierConfig,
        client: httpx.AsyncClient,
        environ: Mapping[str, str] | None = None,
        worker_token: str | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._client = client
        # Parsed once: building URLs and headers per request is a measurable share of httpx's CPU cost.
        self._url = httpx.URL(config.base_url.rstrip("/") + "/chat/completions")
        self._models_url = httpx.URL(config.base_url.rstrip("/") + "/models")
        self._embeddings_url = httpx.URL(config.base_url.rstrip("/") + "/embeddings")
        self._environ = environ
        env = os.environ if environ is None else environ
        # identity: upstream bytes are relayed as they are, so they must not arrive compressed.
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        self.missing_key: str | None = None
        self._worker_token = worker_token
        if worker_token and config.kind == "worker":
            headers["authorization"] = f"Bearer {worker_token}"  # workers accept only the router
        if config.api_key_env:
            key = env.get(config.api_key_env)
            if key:
                headers["authorization"] = f"Bearer {key}"
            else:
                self.missing_key = config.api_key_env
        self._headers = httpx.Headers(headers)
        t = config.timeouts
        self._complete_timeout = httpx.Timeout(t.total, connect=t.connect, pool=t.pool).as_dict()
        self._stream_timeout = httpx.Timeout(t.between_chunks, connect=t.connect, pool=t.pool).as_dict()

    def authorization(self) -> dict[str, str]:
        """The authorization this tier is sent (its key, or the worker token), for reading its telemetry too."""
        value = self._headers.get("authorization")
        return {"authorization": value} if value else {}

    def __repr__(self) -> str:  # never shows headers, so never the key
        return f"TierBackend({self.name!r}, {self.config.base_url!r})"

    def at(self, base_url: str) -> TierBackend:
        """The same tier served at another URL (another worker of it, found by discovery)."""
        config = msgspec.structs.replace(self.config, base_url=base_url)
        return TierBackend(self.name, config, self._client, self._environ, self._worker_token)

    async def complete(self, payload: bytes, wait_s: float | None = None) -> UpstreamReply:
        """`wait_s`: how long to wait for a free connection of the tier's pool (the chain's fallback deadline)."""
        self._require_key()
        request = self._request(payload, _waiting(self._complete_timeout, wait_s))
        with self.translating():
            response = await self._client.send(request)
        self._raise_for_status(response.status_code, response.content, response.headers)
        return UpstreamReply(response.status_code, response.content, _passed_headers(response.headers))

    async def embeddings(self, payload: bytes) -> UpstreamReply:
        """`POST /embeddings` on this tier (an embeddings request the router does not serve itself)."""
        self._require_key()
        request = self._request(payload, self._complete_timeout, self._embeddings_url)
        with self.translating():
            response = await self._client.send(request)
        self._raise_for_status(response.status_code, response.content, response.headers)
        return UpstreamReply(response.status_code, response.content, _passed_headers(response.headers))

    async def open_stream(self, payload: bytes, wait_s: float | None = None) -> UpstreamStream:
        """Send the request and wait for the upstream's status line; errors before any byte raise here."""
        self._require_key()
        request = self._request(payload, _waiting(self._stream_timeout, wait_s))
        with self.translating():
            try:
                with anyio.fail_after(self.config.timeouts.first_byte):
                    response = await self._client.send(request, stream=True)
            except TimeoutError as exc:
                raise UpstreamTimeout(self.name, "no response headers in time (first_byte timeout)") from exc
        if response.status_code != 200:
            try:
                with self.translating():
                    body = await response.aread()
            finally:
                await response.aclose()
            self._raise_for_status(response.status_code, body, response.headers)
        return UpstreamStream(self, response, time.monotonic() + self.config.timeouts.total)

    async def probe(self, timeout_s: float = 1.0) -> tuple[bool, str]:
        """Is the tier reachable now? Used by `/ready`; never raises."""
        if self.missing_key:
            return False, f"no API key: environment variable {self.missing_key} is not set"
        try:
            response = await self._client.get(self._models_url, headers=self._headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            return False, f"unreachable: {type(exc).__name__}"
        if response.status_code != 200:
            return False, f"answered {response.status_code}"
        return True, "ok"

    def _request(self, payload: bytes, timeout: dict[str, float | None], url: httpx.URL | None = None) -> httpx.Request:
        request = httpx.Request(
            "POST", url or self._url, content=payload, headers=self._headers, extensions={"timeout": timeout}
        )
        rid = request_id.get()
        if rid is not None:
            request.headers[REQUEST_ID_HEADER] = rid  # the worker logs under the router's id
        return request

    @contextmanager
    def translating(self) -> Iterator[None]:
        """Translate httpx exceptions into `UpstreamError`s naming this tier."""
        try:
            yield
        except UpstreamError:
            raise
        except httpx.PoolTimeout as exc:
            message = f"all {self.config.max_connections} connections to the tier are in use"
            raise UpstreamUnavailable(self.name, message, reason="pool_exhausted") from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(self.name, f"no answer in time ({type(exc).__name__})", reason="timeout") from exc
        except httpx.ConnectError as exc:
            message = f"cannot reach the backend ({type(exc).__name__})"
            raise UpstreamUnavailable(self.name, message, reason="connect_failed") from exc
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            message = f"the connection broke ({type(exc).__name__})"
            raise UpstreamUnavailable(self.name, message, reason="connection_lost") from exc
        except httpx.HTTPError as exc:
            raise UpstreamBadResponse(self.name, f"transport error ({type(exc).__name__})") from exc

    def _require_key(self) -> None:
        if self.missing_key:
            raise UpstreamUnavailable(self.name, f"no API key: set the environment variable {self.missing_key}")

    def _raise_for_status(self, status: int, body: bytes, headers: httpx.Headers) -> None:
        if status == 200:
            return
        code = _error_code(body)
        if status == 400 and code == CONTEXT_LENGTH_EXCEEDED:
            raise ContextLengthExceeded(self.name, _error_message(body), reason="context_length", status=status)
        if status in RELAYED_CLIENT_ERRORS:
            raise RelayedClientError(self.name, status, body)
        detail = f"the backend answered {status}" + (f" ({code})" if code else "")
        reason = code or ("rate_limited" if status == 429 else f"http_{status}")
        if status in (429, 503):
            error: UpstreamError = UpstreamUnavailable(self.name, detail, reason=reason, status=status)
        elif status == 504:
            error = UpstreamTimeout(self.name, detail, reason=reason, status=status)
        else:
            error = UpstreamBadResponse(self.name, detail, reason=reason, status=status)
        retry_after = headers.get("retry-after")
        if retry_after:
            error.retry_after = retry_after
        raise error


def _waiting(timeout: dict[str, float | None], wait_s: float | None) -> dict[str, float | None]:
    if wait_s is None:
        return timeout
    pool = timeout.get("pool")
    return {**timeout, "pool": wait_s if pool is None else min(pool, wait_s)}


def create_client(max_connections: int) -> httpx.AsyncClient:
    """A pooled client: one per tier (`tiers.<name>.max_connections`), so held streams to one tier cannot take
    the connections another needs; per-request timeouts come from the tier.

    Plain-HTTP upstreams (the workers) go through `FastHTTPTransport`; https ones through httpx's own.
    """
    return httpx.AsyncClient(
        mounts={"http://": FastHTTPTransport(max_connections)},
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        timeout=httpx.Timeout(60.0, connect=2.0),
        follow_redirects=False,
        trust_env=False,
    )


def _error_code(body: bytes) -> str | None:
    """The `error.code` of an OpenAI-shaped error body (our workers say `vram_exhausted`, `queue_full`)."""
    code = _error_field(body, "code")
    return code if code is not None and code.isidentifier() and len(code) <= 64 else None


def _error_message(body: bytes) -> str:
    """The `error.message` of an OpenAI-shaped error body, shortened (a log line and a fallback's detail)."""
    return (_error_field(body, "message") or "the prompt exceeds the context window")[:300]


def _error_field(body: bytes, name: str) -> str | None:
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    error = decoded.get("error") if isinstance(decoded, dict) else None
    value = error.get(name) if isinstance(error, dict) else None
    return value if isinstance(value, str) else None


def _passed_headers(headers: httpx.Headers) -> dict[str, str]:
    return {"content-type": headers.get("content-type", "application/json")}
