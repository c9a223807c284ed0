"""HTTP framing through a real router on loopback: encoded request bodies (gzip, deflate) within the body limit,
and streams refused to HTTP/1.0 clients (sent over a raw socket, as such a client would)."""

from __future__ import annotations

import gzip
import json
import socket
import zlib
from typing import Any

import httpx
import pytest

from router.api.framing import decode
from router.wire.errors import InvalidRequest, PayloadTooLarge
from tests import openai_schema
from tests.helpers import RouterFactory
from tests.servers import ServerThread

BODY = json.dumps({"model": "small", "messages": [{"role": "user", "content": "What is the capital of France?"}]})
MAX_BODY = 4 * 1024 * 1024  # server.max_body_bytes in the shipped config


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODED = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "deflate (raw)": raw_deflate,
    "gzip, deflate": lambda data: zlib.compress(gzip.compress(data)),
}


def post(router: ServerThread, content: bytes, encoding: str, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"content-type": "application/json", "content-encoding": encoding}
    return httpx.post(f"{router.url}{path}", content=content, headers=headers, timeout=30)


@pytest.mark.parametrize("encoding", list(ENCODED))
def test_an_encoded_body_is_decoded(start_router: RouterFactory, encoding: str) -> None:
    router = start_router()
    response = post(router, ENCODED[encoding](BODY.encode()), encoding.removesuffix(" (raw)"))
    assert response.status_code == 200, response.text
    completion = openai_schema.completion(response.content)
    assert completion.choices[0].message.content == "[small] What is the capital of France?"
    routed = post(router, gzip.compress(BODY.encode()), "gzip", "/v1/route")
    assert routed.status_code == 200 and routed.json()["tier"] == "small"


def test_a_zip_bomb_is_refused_at_the_body_limit(start_router: RouterFactory) -> None:
    router = start_router()
    content = b"a" * (MAX_BODY + 1)
    bomb = gzip.compress(b'{"messages": [{"role": "user", "content": "' + content + b'"}]}')
    assert len(bomb) < 64 * 1024  # small on the wire, over the limit once inflated
    response = post(router, bomb, "gzip")
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert "decoded" in response.json()["error"]["message"]


def test_decoding_never_outgrows_the_limit() -> None:
    exactly = b"x" * 4096
    assert decode(gzip.compress(exactly), ["gzip"], 4096) == exactly
    with pytest.raises(PayloadTooLarge):
        decode(gzip.compress(exactly + b"x"), ["gzip"], 4096)
    with pytest.raises(PayloadTooLarge):  # the second member of a gzip body counts too
        decode(gzip.compress(exactly) + gzip.compress(b"x"), ["gzip"], 4096)
    assert decode(gzip.compress(b"ab") + gzip.compress(b"cd"), ["gzip"], 4096) == b"abcd"
    with pytest.raises(InvalidRequest):
        decode(gzip.compress(exactly)[:-10], ["gzip"], 4096)


@pytest.mark.parametrize(("content", "encoding"), [(b"not gzip at all", "gzip"), (b"not deflate", "deflate")])
def test_a_corrupt_encoded_body_is_a_400(start_router: RouterFactory, content: bytes, encoding: str) -> None:
    router = start_router()
    response = post(router, content, encoding)
    assert response.status_code == 400, response.text
    assert f"not valid {encoding}" in response.json()["error"]["message"]


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, compress"])
def test_an_unknown_encoding_is_a_415(start_router: RouterFactory, encoding: str) -> None:
    router = start_router()
    response = post(router, BODY.encode(), encoding)
    assert response.status_code == 415, response.text
    assert response.headers["accept-encoding"] == "gzip, deflate"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "unsupported_content_encoding" and error["type"] == "invalid_request_error"
    assert encoding.split(", ")[-1] in error["message"] and "gzip, deflate" in error["message"]


def http10(router: ServerThread, body: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    """POST /v1/chat/completions as an HTTP/1.0 client: (status line, headers, body read until the server closes)."""
    payload = json.dumps(body).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    received = b""
    with socket.create_connection(("127.0.0.1", router.port), timeout=30) as sock:
        sock.sendall(request)
        while data := sock.recv(65536):  # an HTTP/1.0 answer ends when the server closes the connection
            received += data
    head, _, content = received.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, content


def test_a_stream_to_an_http10_client_is_refused_with_505(start_router: RouterFactory) -> None:
    router = start_router()
    question = json.loads(BODY)
    status, headers, content = http10(router, {**question, "stream": True})
    assert status.split(" ")[1] == "505", status
    assert "transfer-encoding" not in headers and int(headers["content-length"]) == len(content)
    error = json.loads(content)["error"]
    assert error["code"] == "http_version_not_supported" and "HTTP/1.1" in error["message"]

    status, headers, content = http10(router, question)  # a plain answer is fine over 1.0
    assert status.split(" ")[1] == "200", status
    assert "transfer-encoding" not in headers and int(headers["content-length"]) == len(content)
    assert openai_schema.completion(content).choices[0].message.content == "[small] What is the capital of France?"


def test_a_stream_over_http11_is_unaffected(start_router: RouterFactory) -> None:
    router = start_router()
    response = httpx.post(f"{router.url}/v1/chat/completions", json={**json.loads(BODY), "stream": True}, timeout=30)
    assert response.status_code == 200 and response.headers["transfer-encoding"] == "chunked"
    assert openai_schema.text_of(openai_schema.stream(response.text)) == "[small] What is the capital of France?"
