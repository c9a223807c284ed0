"""A lean HTTP/1.1 keep-alive transport for httpx, for plain-HTTP upstreams (our workers on loopback or LAN).

httpx's default transport (httpcore + h11 + anyio) costs ~0.7 ms of CPU per request on the 2-core
machines this router targets, more than everything else the router does together; this one costs
about a tenth of that (bench/RESULTS.md). It speaks only what the workers need: HTTP/1.1 over TCP,
keep-alive, Content-Length or chunked bodies (decoded by httptools), streamed responses. https
upstreams (a remote API) keep httpx's own transport, where network latency dwarfs CPU anyway.

Errors are raised as httpx's own exception types, so callers cannot tell the transports apart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

import httptools
import httpx

Origin = tuple[str, int]
_CHUNK = 65536


class _Parser:
    """httptools callbacks collecting one response: status, headers, then body chunks as they come."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.body: deque[bytes] = deque()
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # httptools answers this correctly only until the message completes, so keep it now.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = False

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _ResponseStream(httpx.AsyncByteStream):
    """The response body, read from the socket as the caller iterates; returns the connection when done."""

    def __init__(
        self,
        transport: FastHTTPTransport,
        origin: Origin,
        conn: _Connection,
        state: _Parser,
        read_timeout: float | None,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._conn = conn
        self._state = state
        self._read_timeout = read_timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        state = self._state
        while True:
            while state.body:
                yield state.body.popleft()
            if state.complete:
                break
            data = await self._transport._read(self._conn, self._read_timeout)
            if not data:
                raise httpx.RemoteProtocolError("the server closed the connection mid-response")
            try:
                state.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise httpx.RemoteProtocolError(f"malformed HTTP response: {exc}") from exc
        self._release(reuse=state.keep_alive)

    async def aclose(self) -> None:
        # Closed before the body was read to its end: the connection is mid-message, so drop it.
        self._release(reuse=False)

    def _release(self, *, reuse: bool) -> None:
        if not self._released:
            self._released = True
            self._transport._release(self._origin, self._conn, reuse=reuse and self._state.complete)


class FastHTTPTransport(httpx.AsyncBaseTransport):
    """Pooled HTTP/1.1 over TCP; at most `max_connections` open at once across all origins."""

    def __init__(self, max_connections: int = 256) -> None:
        self._idle: dict[Origin, list[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"{type(self).__name__} serves http:// only, not {url.scheme}://")
        origin = (url.host, url.port or 80)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        head = _request_head(request)
        body = await request.aread()
        for attempt in (1, 2):
            conn = await self._acquire(origin, timeouts)
            reused = conn.used
            conn.used = True
            state = _Parser()
            try:
                if len(body) < _CHUNK:
                    conn.writer.write(head + body)
                else:
                    conn.writer.write(head)
                    conn.writer.write(body)
                    await conn.writer.drain()
                await self._read_head(conn, state, timeouts.get("read"))
            except BaseException as exc:
                self._release(origin, conn, reuse=False)
                if isinstance(exc, _StaleConnection) and reused and attempt == 1:
                    continue  # an idle keep-alive connection the server had closed: retry once on a new one
                if isinstance(exc, _StaleConnection):
                    raise httpx.RemoteProtocolError("the server closed the connection without a response") from exc
                raise
            status = state.parser.get_status_code()
            stream = _ResponseStream(self, origin, conn, state, timeouts.get("read"))
            return httpx.Response(
                status, headers=state.headers, stream=stream, extensions={"http_version": b"HTTP/1.1"}
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def _acquire(self, origin: Origin, timeouts: dict[str, float | None]) -> _Connection:
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout("no free connection in the pool in time") from exc
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                reader, writer = await asyncio.open_connection(origin[0], origin[1], limit=_CHUNK * 4)
        except TimeoutError as exc:
            self._slots.release()
            raise httpx.ConnectTimeout(f"connecting to {origin[0]}:{origin[1]} timed out") from exc
        except OSError as exc:
            self._slots.release()
            raise httpx.ConnectError(f"cannot connect to {origin[0]}:{origin[1]}: {exc}") from exc
        return _Connection(reader, writer)

    def _release(self, origin: Origin, conn: _Connection, *, reuse: bool) -> None:
        self._slots.release()
        if reuse and not self._closed and conn.usable():
            self._idle.setdefault(origin, []).append(conn)
        else:
            conn.close()

    async def _read_head(self, conn: _Connection, state: _Parser, read_timeout: float | None) -> None:
        received = False
        while not state.headers_done:
            data = await self._read(conn, read_timeout)
            if not data:
                if not received:
                    raise _StaleConnection
                raise httpx.RemoteProtocolError("the server closed the connection mid-headers")
            received = True
            try:
                state.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:  # pragma: no cover - we never ask to upgrade
                raise httpx.RemoteProtocolError("unexpected protocol upgrade") from exc
            except httptools.HttpParserError as exc:
                raise httpx.RemoteProtocolError(f"malformed HTTP response: {exc}") from exc

    async def _read(self, conn: _Connection, read_timeout: float | None) -> bytes:
        try:
            async with asyncio.timeout(read_timeout):
                return await conn.reader.read(_CHUNK)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("no data from the server in time") from exc
        except (ConnectionError, OSError) as exc:
            raise httpx.ReadError(f"connection lost: {exc}") from exc


class _StaleConnection(Exception):
    """EOF before any byte of the response."""


def _request_head(request: httpx.Request) -> bytes:
    target = request.url.raw_path
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in request.headers.raw)
    return b"\r\n".join(lines) + b"\r\n\r\n"
