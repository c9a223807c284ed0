"""The keep-alive transport against raw TCP servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from router.dispatch.transport import FastHTTPTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    return head + await reader.readexactly(length)


def run_with_server(handler: Handler, body: Callable[[str, list[int]], Awaitable[None]]) -> list[int]:
    """Serve `handler` on a free port, run `body(url, connections)`; returns connection ids seen."""
    connections: list[int] = []

    async def main() -> None:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(len(connections))
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await body(f"http://127.0.0.1:{port}/v1/x", connections)

    asyncio.run(main())
    return connections


async def keep_alive_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(mounts={"http://": FastHTTPTransport(8)}, timeout=2.0)


def test_connections_are_reused() -> None:
    async def body(url: str, connections: list[int]) -> None:
        async with client() as http:
            for _ in range(20):
                response = await http.post(url, content=b'{"a": 1}')
                assert response.status_code == 200 and response.json() == {}

    assert len(run_with_server(keep_alive_ok, body)) == 1


def test_chunked_and_streamed_bodies() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await keep_alive_ok(reader, writer)

    async def body(url: str, connections: list[int]) -> None:
        async with client() as http:
            async with http.stream("POST", url, content=b"{}") as response:
                parts = [part async for part in response.aiter_raw()]
            assert b"".join(parts) == b"data: 1\n\ndata: 2\n\n"
            assert len(parts) == 2, "chunks arrive as they are sent, not buffered"
            assert (await http.get(url)).status_code == 200

    assert len(run_with_server(chunked, body)) == 1


def test_stale_idle_connection_is_retried_once() -> None:
    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)  # no "connection: close", yet the server hangs up
        await writer.drain()

    async def body(url: str, connections: list[int]) -> None:
        async with client() as http:
            for _ in range(3):
                await asyncio.sleep(0.05)
                assert (await http.post(url, content=b"{}")).status_code == 200

    assert len(run_with_server(one_per_connection, body)) == 3


def test_errors_are_httpx_errors(unused_url: str) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{partial")
        await writer.drain()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    def expect(exc: type[Exception], timeout: float = 2.0) -> Callable[[str, list[int]], Awaitable[None]]:
        async def body(url: str, connections: list[int]) -> None:
            async with httpx.AsyncClient(mounts={"http://": FastHTTPTransport(8)}, timeout=timeout) as http:
                with pytest.raises(exc):
                    await http.post(url, content=b"{}")

        return body

    run_with_server(silent, expect(httpx.ReadTimeout, 0.2))
    run_with_server(truncated, expect(httpx.RemoteProtocolError))
    run_with_server(garbage, expect(httpx.RemoteProtocolError))

    async def refused() -> None:
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.post(unused_url, content=b"{}")

    asyncio.run(refused())


def test_https_is_not_served() -> None:
    async def main() -> None:
        transport = FastHTTPTransport(1)
        with pytest.raises(httpx.UnsupportedProtocol):
            await transport.handle_async_request(httpx.Request("GET", "https://example.invalid/"))

    asyncio.run(main())


def test_pool_limit_waits_then_times_out() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.5)
        writer.write(OK)
        await writer.drain()

    async def body(url: str, connections: list[int]) -> None:
        timeout = httpx.Timeout(2.0, pool=0.1)
        async with httpx.AsyncClient(mounts={"http://": FastHTTPTransport(1)}, timeout=timeout) as http:
            first = asyncio.create_task(http.post(url, content=b"{}"))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await http.post(url, content=b"{}")
            assert (await first).status_code == 200

    run_with_server(slow, body)
