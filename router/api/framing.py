"""What HTTP itself asks of a request: an encoded body (gzip, deflate) decoded within the body limit, and no
stream promised to an HTTP/1.0 client, which cannot read one.

Decoding is a middleware, so every endpoint that reads a body gets the decoded one: the compressed body is read
up to `server.max_body_bytes`, inflated in a worker thread to at most that many bytes (a small zip bomb cannot
grow past it: 413), and handed on with its `content-length` corrected and `content-encoding` removed. An
encoding it cannot decode is a 415 that names the ones it can.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import anyio
import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from router.wire.errors import HttpVersionNotSupported, InvalidRequest, PayloadTooLarge, UnsupportedEncoding

WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""zlib's window bits per content coding: a gzip member, or a zlib stream (RFC 9110's `deflate`)."""
ACCEPTED = ("gzip", "deflate")


def decoded_bodies(max_bytes: int) -> Callable[[ASGIApp], ASGIApp]:
    """The middleware (for Litestar's `middleware=[...]`): request bodies decoded, at most `max_bytes` either way."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            codings = content_codings(scope) if scope["type"] == ScopeType.HTTP else []
            if not codings:
                await app(scope, receive, send)
                return
            unsupported = [c for c in codings if c not in WBITS]
            if unsupported:
                raise UnsupportedEncoding(
                    f"the request body's Content-Encoding '{', '.join(unsupported)}' is not supported; "
                    f"send it as {', '.join(ACCEPTED)} or unencoded",
                    ACCEPTED,
                )
            encoded = await read_body(receive, max_bytes)
            body = await anyio.to_thread.run_sync(decode, encoded, codings, max_bytes)
            headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
            scope["headers"] = [*headers, (b"content-length", str(len(body)).encode())]
            await app(scope, replay(body, receive), send)

        return middleware

    return wrap


def content_codings(scope: Scope) -> list[str]:
    """The codings applied to the body, in the order they were applied (`identity` left out)."""
    codings: list[str] = []
    for name, value in scope["headers"]:
        if name == b"content-encoding":
            codings.extend(c.strip().lower() for c in value.decode("latin-1").split(","))
    return [c for c in codings if c and c != "identity"]


async def read_body(receive: Receive, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away: what came so far fails to decode, a 400
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the encoded request body is larger than this server accepts ({max_bytes} bytes)")
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the decoded body once, then whatever the connection says next (a disconnect)."""
    sent = False

    async def replayed() -> ReceiveMessage:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def decode(body: bytes, codings: list[str], max_bytes: int) -> bytes:
    """Undo the codings, last applied first; never more than `max_bytes` of output (413)."""
    for coding in reversed(codings):
        try:
            body = _inflate(body, WBITS[coding], max_bytes)
        except zlib.error as exc:
            if coding != "deflate":
                raise InvalidRequest(f"the request body is not valid {coding}: {exc}") from exc
            try:  # some clients send a raw deflate stream, without the zlib wrapper RFC 9110 asks for
                body = _inflate(body, -zlib.MAX_WBITS, max_bytes)
            except zlib.error as raw_exc:
                raise InvalidRequest(f"the request body is not valid deflate: {raw_exc}") from raw_exc
    return body


def _inflate(body: bytes, wbits: int, max_bytes: int) -> bytes:
    out = bytearray()
    rest = body
    while True:  # a gzip body may hold several members, one after the other
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(rest, max_bytes + 1 - len(out))
        if len(out) > max_bytes or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the request body, decoded, is larger than this server accepts ({max_bytes} bytes)")
        if not inflater.eof:
            raise zlib.error("the compressed data ends early")
        rest = inflater.unused_data
        if not rest or wbits != WBITS["gzip"]:
            break
    if rest:
        raise zlib.error("unexpected data after the end of the compressed stream")
    return bytes(out)


class _StreamFlag(msgspec.Struct):
    stream: bool = False


def refuse_stream_over_http10(scope: Scope, body: bytes) -> None:
    """505 for `stream: true` from an HTTP/1.0 client: the server frames streams in chunks, which 1.0 lacks."""
    if scope.get("http_version") != "1.0":
        return
    try:
        streaming = msgspec.json.decode(body, type=_StreamFlag).stream
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return  # not a valid request: the pipeline answers it with the 400 that names the problem
    if streaming:
        raise HttpVersionNotSupported(
            "streamed answers need HTTP/1.1 (they are sent with chunked transfer encoding); "
            "repeat the request over HTTP/1.1, or with stream: false"
        )
