"""The router's errors (the workers' own extend it in workers.errors), each carrying its HTTP status and OpenAI
error type. One handler (router.wire.handlers) renders them all in the OpenAI error shape.

    RouterError                          500  server_error
    ├── InvalidRequest                   400  invalid_request_error      a field, a limit or the body is wrong
    ├── Unauthorized                     401  authentication_error       invalid_api_key (with WWW-Authenticate)
    ├── PermissionDenied                 403  permission_error           the key may not use the tier or model
    ├── UnknownModel                     404  invalid_request_error      model_not_found
    ├── UnknownEndpoint                  404  invalid_request_error      unknown_url (names the supported ones)
    ├── MethodNotAllowed                 405  invalid_request_error      method_not_allowed, with Allow
    ├── PayloadTooLarge                  413  invalid_request_error      request_too_large (the body limit)
    ├── UnsupportedEncoding              415  invalid_request_error      unsupported_content_encoding
    ├── UnsupportedMediaType             415  invalid_request_error      unsupported_media_type (a POST not JSON)
    ├── RateLimited                      429  rate_limit_error           rate_limit_exceeded, with Retry-After
    ├── LimiterUnavailable               503  server_error               rate_limiter_unavailable (Redis down)
    ├── KeyStoreUnavailable              503  server_error               auth_unavailable (Redis down)
    ├── HttpVersionNotSupported          505  invalid_request_error      http_version_not_supported (a 1.0 stream)
    ├── UpstreamError                         upstream_error             names the tier and, in a word, why
    │   ├── RelayedClientError           4xx  the tier rejected the request as the client's fault: relayed as is
    │   ├── ContextLengthExceeded        400  context_length_exceeded    the tier's window is too small: the
    │   │     (router.dispatch.backends)      dispatcher moves on, and answers it only if no tier of the chain fits
    │   ├── UpstreamBadResponse          502  upstream_error             the tier answered with an error or garbage
    │   ├── UpstreamUnavailable          503  upstream_unavailable       refused connection, 503, pre-flight refusal
    │   │   └── BreakerOpen (router.dispatch.resilience)                 the tier's circuit breaker is open
    │   └── UpstreamTimeout              504  upstream_timeout           no answer in time
    └── WorkerUnavailable (workers.errors) 503  server_error             retry elsewhere: the router falls back
        ├── VramRefused                       vram_exhausted, with needed_bytes and free_bytes
        ├── QueueFullError                    queue_full, with Retry-After
        ├── NotReady                          not_ready (still loading)
        └── GenerationFailed                  generation_failed

Exceptions from httpx are translated into these at the backend boundary (`router.dispatch.backends`), Redis's
at the state store (`router.core.state`), the engine's at the worker (`workers.errors`).
"""

from __future__ import annotations

from router.wire.protocol import ErrorBody, ErrorDetail


class RouterError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> ErrorBody:
        return ErrorBody(ErrorDetail(self.message, self.error_type, self.param, self.code))

    def explain(self, why: str) -> None:
        """Add what the router made of the error to its message (the client reads it in the error body)."""
        self.message = f"{self.message}; {why}"
        self.args = (self.message,)

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(RouterError):
    status_code = 400
    error_type = "invalid_request_error"


class PermissionDenied(RouterError):
    status_code = 403
    error_type = "permission_error"


class UnknownModel(RouterError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(RouterError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class UnknownEndpoint(RouterError):
    """No route for the path: the message names it and lists what this server does serve."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "unknown_url"

    def __init__(self, method: str, path: str, supported: list[str]) -> None:
        shown = path if len(path) <= 200 else path[:200] + "…"
        super().__init__(
            f"Invalid URL ({method} {shown}): this server does not serve it. Supported: {', '.join(supported)}"
        )


class MethodNotAllowed(RouterError):
    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, method: str, path: str, allowed: list[str]) -> None:
        super().__init__(f"{method} is not allowed on {path}; allowed: {', '.join(allowed)}")
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"allow": ", ".join(self.allowed)}


class UnsupportedEncoding(RouterError):
    """A request body in a Content-Encoding the server cannot decode; `Accept-Encoding` says which it can."""

    status_code = 415
    error_type = "invalid_request_error"
    code = "unsupported_content_encoding"

    def __init__(self, message: str, accepted: tuple[str, ...]) -> None:
        super().__init__(message, param="content-encoding")
        self.accepted = accepted

    def headers(self) -> dict[str, str]:
        return {"accept-encoding": ", ".join(self.accepted)}


class UnsupportedMediaType(RouterError):
    """A POST whose body is not declared `application/json` (a cross-site form post, say)."""

    status_code = 415
    error_type = "invalid_request_error"
    code = "unsupported_media_type"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="content-type")


class HttpVersionNotSupported(RouterError):
    status_code = 505
    error_type = "invalid_request_error"
    code = "http_version_not_supported"


class UpstreamError(RouterError):
    error_type = "upstream_error"
    retry_after: str | None = None

    def __init__(
        self,
        tier: str,
        message: str,
        *,
        code: str | None = None,
        reason: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(f"tier '{tier}': {message}", code=code)
        self.tier = tier
        self.reason = reason
        """Why, in a word, for the fallback header and counters: the upstream's own error code
        (`vram_exhausted`, `queue_full`), `connect_failed`, `connection_lost`, `timeout`, `http_<status>`."""
        self.status = status
        """The upstream's HTTP status, when it answered."""

    def headers(self) -> dict[str, str]:
        headers = {"x-router-tier": self.tier}
        if self.retry_after:
            headers["retry-after"] = self.retry_after
        return headers


class RelayedClientError(UpstreamError):
    """The upstream rejected the request as the client's fault; its status and body go back unchanged."""

    def __init__(self, tier: str, status: int, body: bytes) -> None:
        super().__init__(tier, f"rejected the request with {status}")
        self.status_code = status
        self.raw_body = body


class UpstreamBadResponse(UpstreamError):
    status_code = 502
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class RateLimited(RouterError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after = str(max(1, int(retry_after_s + 0.999)))

    def headers(self) -> dict[str, str]:
        return {"retry-after": self.retry_after}


class LimiterUnavailable(RouterError):
    status_code = 503
    error_type = "server_error"
    code = "rate_limiter_unavailable"


class Unauthorized(RouterError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": "Bearer"}


class KeyStoreUnavailable(RouterError):
    status_code = 503
    error_type = "server_error"
    code = "auth_unavailable"
