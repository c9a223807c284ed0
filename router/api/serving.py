"""Serving an app (the router, a worker, a stand-in) with uvicorn, with what a slow or greedy client may cost
bounded per connection: its request line and headers must arrive within `header_timeout_s` and fit in
`max_header_bytes` (else 408 or 431, and the connection is closed), and its body within `body_timeout_s`.

uvicorn has no such limits for its httptools parser (it reads headers of any size, for ever), so the protocol
class here adds them; uvicorn takes a protocol class for `http`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router.core.serving import ServerConfig

GRACEFUL_S = 30
"""On SIGTERM, requests in flight get 30 s to finish; then the lifespan's shutdown runs regardless (a worker
deregisters, resources close) instead of waiting forever on a connection."""


def bounded_protocol(header_timeout_s: float, body_timeout_s: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline for the headers and one for the body, and a header size cap."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _in_headers = False

        def data_received(self, data: bytes) -> None:
            if not self._in_headers and (self.cycle is None or self.cycle.response_complete):
                self._in_headers, self._header_bytes = True, 0  # a new request starts with these bytes
                self._arm(header_timeout_s, b"408 Request Timeout", b"request headers not received in time")
            if self._in_headers:
                self._header_bytes += len(data)
            super().data_received(data)
            # Still in the headers after this read: they are that long already (a read that also completes
            # them is let through, so one read's worth beyond the limit is the most that is accepted).
            if self._in_headers and self._header_bytes > max_header_bytes:
                self._refuse(b"431 Request Header Fields Too Large", b"request headers are too large")

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._arm(body_timeout_s, None, b"")  # the body, if any, now has its own deadline
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, seconds: float, status: bytes | None, reason: bytes) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._refuse, status, reason)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _refuse(self, status: bytes | None, reason: bytes) -> None:
            """Answer `status` (before any response started) and close; None: just close (the app is running)."""
            self._disarm()
            if self.transport.is_closing():
                return
            if status is not None and (self.cycle is None or not self.cycle.response_started):
                head = b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                self.transport.write(head + b"content-length: %d\r\n\r\n" % len(reason) + reason)
            if self.cycle is not None:
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self.transport.close()

    return BoundedHttpToolsProtocol


def uvicorn_config(
    app: Any,
    host: str,
    port: int,
    server: ServerConfig | None = None,
    *,
    log_level: str = "info",
    graceful_s: int = GRACEFUL_S,
) -> uvicorn.Config:
    """The uvicorn settings every process of the project serves with."""
    limits = server or ServerConfig()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=graceful_s,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise; here only from configured proxies.
        proxy_headers=bool(limits.forwarded_allow_ips),
        forwarded_allow_ips=",".join(limits.forwarded_allow_ips) or None,
        http=bounded_protocol(limits.header_timeout_s, limits.body_timeout_s, limits.max_header_bytes),
    )
