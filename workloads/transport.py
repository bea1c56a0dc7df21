"""A lean HTTP/1.1 transport for httpx: O(1) keep-alive pooling and timed reads.

Why not httpx's default transport: httpcore's pool re-examines every connection (a
``poll`` syscall each, and a quadratic idle count) whenever a request starts or ends,
which at a few hundred concurrent streams costs milliseconds a request and delays
sends by seconds; and its pure-Python parser costs tens of microseconds a streamed
chunk. The replayer is a measuring instrument, so it brings its own transport:

- one asyncio ``Protocol`` a connection; the response head, ``Content-Length``,
  chunked and close-delimited bodies are parsed as bytes arrive;
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

import httpx

_HEAD, _BODY, _DONE = 0, 1, 2
_SIZE, _DATA, _DATA_END, _TRAILER = 0, 1, 2, 3
_MAX_HEAD = 64 * 1024


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: sends a request, parses one response at a time."""

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
        self._head = b""
        self._mode = "none"  # length | chunked | close | none
        self._left = 0
        self._cstate = _SIZE
        self._cbuf = b""
        self._head_only = False

    # ---- protocol callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.phase == _BODY and self._mode == "close":
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
            if self.phase == _HEAD:
                data = self._parse_head(data)
                if self.phase == _HEAD or not data:
                    self._wake()
                    return
            if self.phase == _BODY:
                self._parse_body(data, ns)
            elif data:  # bytes after a complete response: do not reuse the connection
                self.keep_alive = False
        except httpx.RemoteProtocolError as e:
            self.error = e
            self.keep_alive = False
            if self.transport is not None:
                self.transport.close()
        if self.sink is None or self.phase == _DONE or self.error is not None:
            self._wake()  # a sink took the pieces: wake the reader only at the end

    # ---- parsing -----------------------------------------------------------------------------

    def _parse_head(self, data: bytes) -> bytes:
        buf = self._head + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise httpx.RemoteProtocolError("response head too large")
            self._head = buf
            return b""
        lines = buf[:end].split(b"\r\n")
        rest = buf[end + 4 :]
        self._head = b""
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise httpx.RemoteProtocolError(f"bad status code: {parts[1][:20]!r}") from None
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise httpx.RemoteProtocolError(f"bad header line: {line[:80]!r}")
            headers.append((name.strip(), value.strip()))
        if 100 <= status < 200:
            return self._parse_head(rest) if rest else b""  # an interim answer: skip it
        self.status = status
        self.headers = headers
        lower = {k.lower(): v.lower() for k, v in headers}
        conn = lower.get(b"connection", b"")
        self.keep_alive = parts[0] == b"HTTP/1.1" and b"close" not in conn
        if self._head_only or status in (204, 304):
            self._mode = "none"
        elif b"chunked" in lower.get(b"transfer-encoding", b""):
            self._mode = "chunked"
        elif b"content-length" in lower:
            try:
                self._left = int(lower[b"content-length"])
            except ValueError:
                raise httpx.RemoteProtocolError("bad Content-Length") from None
            self._mode = "length"
        else:
            self._mode = "close"
            self.keep_alive = False
        self.phase = (
            _DONE if self._mode == "none" or (self._mode == "length" and self._left == 0) else _BODY
        )
        return rest

    def _parse_body(self, data: bytes, ns: int) -> None:
        if self._mode == "length":
            piece = data[: self._left]
            self._left -= len(piece)
            if piece:
                self._emit(piece, ns)
            if self._left == 0:
                self.phase = _DONE
                if len(data) > len(piece):
                    self.keep_alive = False
        elif self._mode == "chunked":
            self._dechunk(data, ns)
        else:
            self._emit(data, ns)

    def _dechunk(self, data: bytes, ns: int) -> None:
        buf = self._cbuf + data if self._cbuf else data
        pos, n = 0, len(buf)
        out: list[bytes] = []
        state = self._cstate
        while pos < n:
            if state == _DATA:
                take = min(self._left, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                if self._left:
                    break
                state = _DATA_END
            elif state == _DATA_END:
                if n - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise httpx.RemoteProtocolError("chunk not followed by CRLF")
                pos += 2
                state = _SIZE
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if n - pos > 1024:
                        raise httpx.RemoteProtocolError("chunk size line too long")
                    break
                line = buf[pos:eol]
                pos = eol + 2
                if state == _TRAILER:
                    if not line:
                        self.phase = _DONE
                        if pos < n:
                            self.keep_alive = False
                        break
                    continue
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise httpx.RemoteProtocolError(f"bad chunk size {line[:20]!r}") from None
                if size < 0:
                    raise httpx.RemoteProtocolError(f"bad chunk size {line[:20]!r}")
                if size == 0:
                    state = _TRAILER
                else:
                    self._left = size
                    state = _DATA
        self._cstate = state
        self._cbuf = buf[pos:] if pos < n and self.phase != _DONE else b""
        if out:
            self._emit(b"".join(out), ns)

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
