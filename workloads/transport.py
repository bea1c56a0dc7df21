"""A lean HTTP/1.1 transport for httpx: O(1) keep-alive pooling and timed reads.

Why not httpx's default transport: httpcore's pool re-examines every connection (a
``poll`` syscall each, and a quadratic idle count) whenever a request starts or ends,
which at a few hundred concurrent streams costs milliseconds a request and delays
sends by seconds; and its pure-Python parser costs tens of microseconds a streamed
chunk. The replayer is a measuring instrument, so it brings its own transport:

- one asyncio ``Protocol`` a connection; the response head, ``Content-Length``,
  chunked and close-delimited bodies are parsed as bytes arrive, by llhttp (httptools,
  the parser uvicorn uses), called from ``data_received``;
- every piece of body carries the ``time.perf_counter_ns()`` of the moment the event
  loop delivered it (``data_received``), not of the moment a task got round to it;
- idle connections wait on a stack per origin; one closed by the server while idle is
  dropped, and a request that finds its reused connection closed before any byte of
  the answer is sent again once on a new one.

`TimedStream.consume(sink)` hands each piece and its stamp to a callback straight from
the protocol (no task switch a piece: the replayer's SSE parsing runs there);
`TimedStream.timed()` yields the same pairs; the response's ordinary byte stream works
too, so the client stays a plain ``httpx.AsyncClient``. Plain ``http://`` only
(tenants are local); the replayer uses httpx's own transport for ``https://``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable

import httptools
import httpx

_HEAD, _BODY, _DONE = 0, 1, 2
_MAX_HEAD = 64 * 1024


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: sends a request, parses one response at a time.

    The bytes are parsed by llhttp (``httptools.HttpResponseParser``, a fresh one a
    response); its callbacks (``on_header``, ``on_body``, ...) run inside ``feed_data``,
    that is inside ``data_received``, so every body piece keeps the stamp of the moment
    its bytes arrived. The pieces of one ``data_received`` go out as one piece, as they
    came off the socket.
    """

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: Exception | None = None
        self.used = False  # has carried a request before (a reused connection)
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.phase = _HEAD
        self.got_bytes = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.chunks: collections.deque[tuple[bytes, int]] = collections.deque()
        self.sink: Callable[[bytes, int], None] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head_bytes = 0  # bytes fed while the head was not complete
        self._interim = False  # the message being parsed is a 1xx interim answer
        self._until_close = False  # the body ends when the server closes the connection
        self._pieces: list[bytes] = []  # body pieces of the current data_received
        self._head_only = False

    # ---- protocol callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.phase == _BODY and self._until_close:
            self.phase = _DONE
        elif self.phase != _DONE and self.error is None:
            self.error = httpx.ReadError(
                "the server closed the connection" + (f": {exc}" if exc else "")
            )
        self._wake()

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost does the bookkeeping

    def data_received(self, data: bytes) -> None:
        ns = time.perf_counter_ns()
        if self.phase == _DONE:  # nothing was asked: a stray answer; do not reuse
            self.keep_alive = False
            self.close()
            return
        self.got_bytes = True
        try:
            self._feed(data)
        except httpx.RemoteProtocolError as e:
            self.error = e
            self.keep_alive = False
            if self.transport is not None:
                self.transport.close()
        if self._pieces:
            piece = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
            self._pieces.clear()
            self._emit(piece, ns)
        if self.sink is None or self.phase == _DONE or self.error is not None:
            self._wake()  # a sink took the pieces: wake the reader only at the end

    # ---- parsing (llhttp) --------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self.phase == _HEAD:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.phase != _DONE:
                raise httpx.RemoteProtocolError("the server switched protocols") from None
            self.keep_alive = False
        except httptools.HttpParserError as e:
            if self.phase == _DONE:  # bytes after a complete response: do not reuse
                self.keep_alive = False
                return
            cause = f" ({e.__context__!r})" if e.__context__ is not None else ""
            raise httpx.RemoteProtocolError(f"{e}{cause}") from None
        if self.phase == _HEAD and self._head_bytes > _MAX_HEAD:
            raise httpx.RemoteProtocolError("response head too large")

    def on_message_begin(self) -> None:
        if self.phase == _DONE:  # a second answer after the complete one: do not reuse
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase == _HEAD:  # not the trailers of a chunked body
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.phase != _HEAD:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim answer: skip it
            self._interim = True
            self.headers = []
            return
        self.status = status
        lower = {k.lower(): v.lower() for k, v in self.headers}
        conn = lower.get(b"connection", b"")
        self.keep_alive = self._parser.get_http_version() == "1.1" and b"close" not in conn
        no_body = self._head_only or status in (204, 304)
        framed = b"chunked" in lower.get(b"transfer-encoding", b"") or b"content-length" in lower
        if not no_body and not framed:
            self._until_close = True
            self.keep_alive = False
        self.phase = _DONE if no_body else _BODY

    def on_body(self, body: bytes) -> None:
        if self.phase == _BODY:
            self._pieces.append(body)
        else:  # a body after a HEAD answer's head: do not reuse
            self.keep_alive = False

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self.phase == _BODY:
            self.phase = _DONE

    def _emit(self, piece: bytes, ns: int) -> None:
        sink = self.sink
        if sink is None:
            self.chunks.append((piece, ns))
            return
        try:
            sink(piece, ns)
        except Exception as e:  # the consumer's bug: end this response, do not kill the loop
            self.error = httpx.ReadError(f"consumer failed on a body piece: {e!r}")
            self.keep_alive = False
            self.sink = None

    # ---- waiting -----------------------------------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until something new arrived (bytes, the end, an error)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            if timeout is None:
                await self._waiter
            else:
                async with asyncio.timeout(timeout):
                    await self._waiter
        except TimeoutError:
            raise httpx.ReadTimeout(f"no data for {timeout} s") from None
        finally:
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class TimedStream(httpx.AsyncByteStream):
    """A response body: ``timed()`` yields ``(bytes, perf_counter_ns)``; iteration yields bytes."""

    def __init__(self, conn: _Conn, pool: LeanTransport, read_timeout: float | None) -> None:
        self._conn = conn
        self._pool = pool
        self._timeout = read_timeout
        self._closed = False

    async def timed(self) -> AsyncIterator[tuple[bytes, int]]:
        c = self._conn
        chunks = c.chunks
        while True:
            while chunks:
                yield chunks.popleft()
            if c.phase == _DONE:
                return
            if c.error is not None:
                raise c.error
            await c.wait(self._timeout)

    async def consume(self, sink: Callable[[bytes, int], None]) -> None:
        """Hand every body piece to ``sink(bytes, ns)`` as the loop delivers it (from the
        protocol callback, with no task switch a piece); return at the end of the body."""
        c = self._conn
        while c.chunks:
            sink(*c.chunks.popleft())
        c.sink = sink
        try:
            while c.phase != _DONE:
                if c.error is not None:
                    raise c.error
                await c.wait(self._timeout)
            if c.error is not None:
                raise c.error
        finally:
            c.sink = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for data, _ in self.timed():
            yield data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool._release(self._conn)


class LeanTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=LeanTransport())``: see the module's docstring."""

    def __init__(self, *, max_keepalive: int = 4096) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._max_keepalive = max_keepalive
        self._n_idle = 0
        self._open: set[_Conn] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"LeanTransport speaks plain http, not {url.scheme}")
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        key = (url.host, url.port or 80)
        body = await request.aread()
        head = [request.method.encode(), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        for k, v in request.headers.raw:
            head += [k, b": ", v, b"\r\n"]
        head.append(b"\r\n")
        payload = b"".join(head) + body
        head_only = request.method == "HEAD"
        for attempt in (0, 1):
            conn = await self._acquire(key, timeouts.get("connect"))
            reused = conn.used
            conn.used = True
            conn._reset()
            conn._head_only = head_only
            try:
                return await self._exchange(conn, payload, timeouts.get("read"))
            except (httpx.ReadError, httpx.WriteError):
                conn.close()
                self._open.discard(conn)
                if attempt == 0 and reused and not conn.got_bytes:
                    continue  # the server had closed it while idle: once more on a new one
                raise
            except BaseException:
                conn.close()
                self._open.discard(conn)
                raise
        raise AssertionError("unreachable")

    async def _exchange(
        self, conn: _Conn, payload: bytes, read_timeout: float | None
    ) -> httpx.Response:
        if conn.transport is None or conn.closed:
            raise httpx.WriteError("connection closed")
        conn.transport.write(payload)
        while conn.phase == _HEAD:
            if conn.error is not None:
                raise conn.error
            await conn.wait(read_timeout)
        stream = TimedStream(conn, self, read_timeout)
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "cotenant.timed": stream},
        )

    async def _acquire(self, key: tuple[str, int], timeout: float | None) -> _Conn:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            self._n_idle -= 1
            if not conn.closed:
                return conn
            self._open.discard(conn)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Conn(key), key[0], key[1])
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {key[0]}:{key[1]} in {timeout} s"
            ) from None
        except OSError as e:
            raise httpx.ConnectError(f"cannot connect to {key[0]}:{key[1]}: {e}") from None
        self._open.add(conn)
        return conn

    async def prewarm(self, url: str, n: int, timeout_s: float = 5.0) -> int:
        """Open up to ``n`` idle connections to ``url``'s origin ahead of use, so that the
        first requests do not time a TCP handshake. Returns how many opened."""
        u = httpx.URL(url)
        key = (u.host, u.port or 80)
        have = len(self._idle.get(key, []))
        want = max(0, min(n, self._max_keepalive) - have)
        results = await asyncio.gather(
            *(self._acquire(key, timeout_s) for _ in range(want)), return_exceptions=True
        )
        opened = 0
        for conn in results:
            if isinstance(conn, _Conn):
                conn.phase = _DONE  # idle: nothing asked yet
                self._release(conn)
                opened += 1
        return opened

    def _release(self, conn: _Conn) -> None:
        if (
            conn.phase == _DONE
            and conn.keep_alive
            and not conn.closed
            and conn.error is None
            and self._n_idle < self._max_keepalive
        ):
            self._idle.setdefault(conn.key, []).append(conn)
            self._n_idle += 1
        else:
            conn.close()
            self._open.discard(conn)

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        self._n_idle = 0
        await asyncio.sleep(0)

    @property
    def open_connections(self) -> int:
        return len(self._open)
