"""The lean HTTP/1.1 transport: body framings, keep-alive, a server that closes idle sockets,
and its parser (llhttp) fed by hand: responses split anywhere, interim answers, stray bytes."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from workloads.transport import _BODY, _DONE, _HEAD, LeanTransport, TimedStream, _Conn

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # returns: keep the connection


async def _serve(handler: Handler) -> tuple[asyncio.Server, str, list[int]]:
    connections: list[int] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                if not await handler(head.split(b" ")[1], writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", connections


async def _answers(path: bytes, w: asyncio.StreamWriter) -> bool:
    if path == b"/length":
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
    elif path == b"/chunked":
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (
            b"4\r\nwiki\r\n",
            b"5;ext=1\r\npe",
            b"dia\r\n",
            b"0\r\n",
            b"x-trailer: 1\r\n\r\n",
        ):
            w.write(piece)
            await w.drain()
            await asyncio.sleep(0.01)
    elif path == b"/close":
        w.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        await w.drain()
        return False
    elif path == b"/status":
        w.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
    elif path == b"/bad":
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
        await w.drain()
        return False
    await w.drain()
    return True


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [("/length", 200, b"hello"), ("/chunked", 200, b"wikipedia"), ("/close", 200, b"until the end"),
     ("/status", 503, b"busy")],
)  # fmt: skip
def test_framings(path: str, status: int, body: bytes) -> None:
    async def main() -> None:
        server, url, _ = await _serve(_answers)
        async with server, httpx.AsyncClient(transport=LeanTransport()) as c:
            r = await c.post(url + path, content=b"{}")
            assert (r.status_code, r.content) == (status, body)

    asyncio.run(main())


def test_timed_pieces_and_keep_alive_reuse() -> None:
    async def main() -> None:
        server, url, conns = await _serve(_answers)
        t = LeanTransport()
        async with server, httpx.AsyncClient(transport=t) as c:
            for _ in range(3):
                r = await c.send(c.build_request("GET", url + "/chunked"), stream=True)
                pieces = [p async for p in r.extensions["cotenant.timed"].timed()]
                await r.aclose()
                assert b"".join(p for p, _ in pieces) == b"wikipedia"
                stamps = [ns for _, ns in pieces]
                assert stamps == sorted(stamps) and stamps[-1] - stamps[0] > 5_000_000
            assert len(conns) == 1 and t.open_connections == 1

    asyncio.run(main())


def test_reused_connection_closed_by_server_is_retried_once() -> None:
    async def close_after(path: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await w.drain()
        return False  # closes without saying so, like a keep-alive timeout

    async def main() -> None:
        server, url, conns = await _serve(close_after)
        async with server, httpx.AsyncClient(transport=LeanTransport()) as c:
            for _ in range(3):
                assert (await c.get(url + "/")).content == b"ok"
                await asyncio.sleep(0.02)
            assert len(conns) == 3

    asyncio.run(main())


def test_protocol_error_and_connect_error() -> None:
    async def main() -> None:
        server, url, _ = await _serve(_answers)
        async with server, httpx.AsyncClient(transport=LeanTransport()) as c:
            with pytest.raises(httpx.RemoteProtocolError, match="chunk size"):
                await c.get(url + "/bad")
        async with httpx.AsyncClient(transport=LeanTransport()) as c:
            with pytest.raises(httpx.ConnectError):
                await c.get("http://127.0.0.1:9/")  # the discard port: nobody listens
            with pytest.raises(httpx.UnsupportedProtocol):
                await c.get("https://127.0.0.1:9/")

    asyncio.run(main())


def test_read_timeout() -> None:
    async def silent(path: bytes, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1)
        return False

    async def main() -> None:
        server, url, _ = await _serve(silent)
        async with (
            server,
            httpx.AsyncClient(transport=LeanTransport(), timeout=httpx.Timeout(0.1)) as c,
        ):
            with pytest.raises(httpx.ReadTimeout):
                await c.get(url + "/")

    asyncio.run(main())


def test_prewarm_opens_idle_connections() -> None:
    async def main() -> None:
        server, url, conns = await _serve(_answers)
        t = LeanTransport()
        async with server, httpx.AsyncClient(transport=t) as c:
            assert await t.prewarm(url, 3) == 3
            await asyncio.sleep(0.05)
            assert len(conns) == 3 and t.open_connections == 3
            rs = await asyncio.gather(*(c.get(url + "/length") for _ in range(3)))
            assert [r.content for r in rs] == [b"hello"] * 3
            assert len(conns) == 3  # the requests used the open ones
        assert await LeanTransport().prewarm("http://127.0.0.1:9", 2) == 0  # nobody there

    asyncio.run(main())


# ---- the parser (llhttp, through httptools) fed by hand: splits, interim answers, strays ----


class _FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _conn(head_only: bool = False) -> tuple[_Conn, _FakeTransport]:
    conn = _Conn(("127.0.0.1", 1))
    t = _FakeTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    conn._head_only = head_only
    return conn, t


_CHUNKED = (
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n"
    b"4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nx-trailer: 1\r\n\r\n"
)
_LENGTH = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
_CLOSE = b"HTTP/1.0 200 OK\r\nx-b: 2\r\n\r\nuntil the end"


@pytest.mark.parametrize(
    ("raw", "body", "keep_alive"),
    [(_CHUNKED, b"wikipedia", True), (_LENGTH, b"hello", True), (_CLOSE, b"until the end", False)],
)
def test_a_response_fed_one_byte_at_a_time(raw: bytes, body: bytes, keep_alive: bool) -> None:
    conn, _ = _conn()
    for i in range(len(raw)):
        conn.data_received(raw[i : i + 1])
    if raw is _CLOSE:
        assert conn.phase == _BODY
        conn.connection_lost(None)  # the end of a close-delimited body
    assert conn.phase == _DONE and conn.error is None
    assert conn.status == 200 and conn.keep_alive is keep_alive
    assert (b"x-trailer", b"1") not in conn.headers  # trailers are not headers
    assert b"".join(p for p, _ in conn.chunks) == body


def test_the_pieces_of_one_read_go_out_as_one_stamped_piece() -> None:
    conn, _ = _conn()
    head, rest = _CHUNKED.split(b"\r\n\r\n", 1)
    conn.data_received(head + b"\r\n\r\n")
    conn.data_received(rest[:20])  # both chunks, split inside the second
    conn.data_received(rest[20:])
    pieces = list(conn.chunks)
    assert [p for p, _ in pieces] == [b"wikipe", b"dia"]
    assert pieces[0][1] <= pieces[1][1]


def test_a_piece_keeps_the_stamp_of_its_arrival_not_of_its_reading() -> None:
    conn, _ = _conn()
    conn.data_received(_LENGTH[:-2])
    before = time.perf_counter_ns()
    conn.data_received(_LENGTH[-2:])
    after = time.perf_counter_ns()

    async def read() -> list[tuple[bytes, int]]:
        return [p async for p in TimedStream(conn, LeanTransport(), None).timed()]

    pieces = asyncio.run(read())  # read later, on a loop that did not exist at arrival
    assert [p for p, _ in pieces] == [b"hel", b"lo"]
    assert pieces[0][1] < before <= pieces[1][1] <= after


def test_an_interim_answer_is_skipped() -> None:
    conn, _ = _conn()
    conn.data_received(b"HTTP/1.1 100 Continue\r\nx-c: 3\r\n\r\n" + _LENGTH[:30])
    assert conn.phase == _HEAD
    conn.data_received(_LENGTH[30:])
    assert (conn.status, conn.phase, conn.headers) == (200, _DONE, [(b"content-length", b"5")])


def test_bytes_after_a_complete_answer_forbid_reuse_but_are_no_error() -> None:
    for extra in (b"X", b"HTTP/1.1 200 OK\r\n"):
        conn, t = _conn()
        conn.data_received(_LENGTH + extra)
        assert conn.phase == _DONE and conn.error is None and not conn.keep_alive
        assert not t.closed
    conn, t = _conn()
    conn.data_received(_LENGTH)
    assert conn.keep_alive
    conn.data_received(b"HTTP/1.1 200 OK\r\n")  # nothing was asked: a stray answer
    assert not conn.keep_alive and t.closed


def test_head_no_content_and_connection_close() -> None:
    conn, _ = _conn(head_only=True)
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n")
    assert conn.phase == _DONE and conn.keep_alive and not conn.chunks
    conn, _ = _conn()
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert conn.phase == _DONE and conn.status == 204
    conn, _ = _conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0\r\n\r\n")
    assert conn.phase == _DONE and not conn.keep_alive


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"HTTX/1.1 200 OK\r\n\r\n", "HTTP/"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "status"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "header"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: five\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nx: " + b"a" * (70 * 1024), "too large"),
    ],
)
def test_protocol_errors(raw: bytes, match: str) -> None:
    conn, t = _conn()
    conn.data_received(raw)
    assert isinstance(conn.error, httpx.RemoteProtocolError)
    assert re.search(match, str(conn.error)), conn.error
    assert t.closed and not conn.keep_alive


def test_a_server_that_writes_one_byte_at_a_time() -> None:
    async def trickle(path: bytes, w: asyncio.StreamWriter) -> bool:
        for i in range(len(_CHUNKED)):
            w.write(_CHUNKED[i : i + 1])
            await w.drain()
            await asyncio.sleep(0)
        return True

    async def main() -> None:
        server, url, conns = await _serve(trickle)
        async with server, httpx.AsyncClient(transport=LeanTransport()) as c:
            for _ in range(2):
                r = await c.get(url + "/")
                assert (r.status_code, r.content, r.headers["x-a"]) == (200, b"wikipedia", "1")
            assert len(conns) == 1  # kept alive

    asyncio.run(main())
