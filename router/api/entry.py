"""What a request to `/v1/*` must show before its body is read: a POST declares `application/json`, it carries
at most one `Authorization` header, and, with `auth` on, a valid key. A stranger costs one header parse and no
body; a client address that keeps presenting bad keys is refused (429) before any key is looked at.

A cross-site form post (`application/x-www-form-urlencoded`, `text/plain`) is refused with 415, so a browser cannot
be made to call the API for a page that is not allowed to (CORS), even with `auth` off.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from router.decide.access import KeyStore
from router.pipeline import RoutingService
from router.wire.errors import InvalidRequest, RateLimited, RouterError, Unauthorized, UnsupportedMediaType

JSON_TYPES = (b"application/json",)
TRACKED_ADDRESSES = 10_000
"""Client addresses whose recent failures are remembered (the oldest are forgotten first)."""


class FailedKeys:
    """Failed key checks per client address over the last minute, in this process."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def refuse_if_throttled(self, address: str) -> None:
        failures = self._recent(address)
        if len(failures) >= self.per_minute:
            wait = 60.0 - (self._clock() - failures[0])
            raise RateLimited(f"too many requests with an invalid API key from {address}; wait and retry", wait)

    def failed(self, address: str) -> None:
        self._recent(address).append(self._clock())
        self._failures.move_to_end(address)
        while len(self._failures) > TRACKED_ADDRESSES:
            self._failures.popitem(last=False)

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.setdefault(address, deque())
        while failures and self._clock() - failures[0] >= 60.0:
            failures.popleft()
        return failures


def entry_checks(service: Callable[[Scope], RoutingService | None], failed: FailedKeys) -> Callable[[ASGIApp], ASGIApp]:
    """The middleware (Litestar's `middleware=[...]`). `service`: the running pipeline (its key store is None with
    auth off; read per request, so a reloaded config applies), which also records every refusal (metrics, the
    access log) like any other request's end."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == ScopeType.HTTP and scope["path"].startswith("/v1/"):
                running = service(scope)
                try:
                    await admit(scope, running.keys if running is not None else None, failed)
                except RouterError as exc:
                    if running is not None:
                        running.refused(exc.status_code)
                    raise
            await app(scope, receive, send)

        return middleware

    return wrap


async def admit(scope: Scope, keys: KeyStore | None, failed: FailedKeys) -> None:
    """Raise the first check that fails (415, 400, 429, 401)."""
    headers = scope["headers"]
    if scope.get("method") == "POST":
        declared = [value for name, value in headers if name == b"content-type"]
        media = declared[0].split(b";")[0].strip().lower() if len(declared) == 1 else b""
        if media not in JSON_TYPES:
            shown = declared[0].decode("latin-1")[:100] if declared else "none"
            raise UnsupportedMediaType(f"the request body must be JSON (Content-Type: application/json), got {shown}")
    authorization = [value for name, value in headers if name == b"authorization"]
    if len(authorization) > 1:
        raise InvalidRequest("send one Authorization header, not several", param="authorization")
    if keys is None:
        return
    client = scope.get("client")
    address = client[0] if client else "unknown"
    failed.refuse_if_throttled(address)
    try:
        await keys.authenticate(authorization[0].decode("latin-1") if authorization else None)
    except Unauthorized:
        failed.failed(address)
        raise
