"""A streaming OpenAI-style stub server: an instrument for measuring the replayer.

It answers ``/v1/completions`` and ``/v1/chat/completions`` (SSE, chunked, like vLLM)
with a fixed time to first token and a fixed gap between tokens, ``/v1/embeddings``
after a fixed delay, and stamps its own times (``time.perf_counter_ns``, the host's
monotonic clock) for every request: when the request was complete, and when each token
chunk was written. ``GET /stamps`` returns them, keyed by the ``x-request-id`` header
(or an arrival counter), so a client's measured TTFT and gaps can be compared with what
the server really did. Not a tenant: DESIGN.md allows test doubles where a test is about
the client itself.

Test hooks, chosen by a request's ``max_tokens``: ``fail`` answers with an HTTP status,
``hang`` never answers; ``on_request`` is told each request's id as it comes in.

    python -m tests.stubs.timing --port 0 --ttft-ms 50 --itl-ms 10 --tokens 64   # from the repo root
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StubConfig:
    ttft_s: float = 0.05
    itl_s: float = 0.01
    tokens: int | None = None  # output tokens; None: the request's max_tokens
    embed_s: float = 0.005
    fail: dict[int, int] = field(default_factory=dict)  # max_tokens -> HTTP status
    hang: frozenset[int] = frozenset()  # max_tokens values never answered
    model: str = "stub"
    # called on the stub's thread with a request's id once it is in: an event for tests
    on_request: Callable[[str], None] | None = None


_STATUS_TEXT = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}


class StubState:
    """What the stub remembers: its config, the stamps, the open connections."""

    def __init__(self, config: StubConfig) -> None:
        self.config = config
        self.stamps: dict[str, list[Any]] = {}
        self.counter = 0
        self.open_connections: set[_Conn] = set()


class _Conn(asyncio.Protocol):
    def __init__(self, shared: StubState) -> None:
        self.s = shared
        self.buf = b""
        self.busy = False
        self.close_after = False
        self.transport: asyncio.Transport | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    # ---- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.s.open_connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.s.open_connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next_request()

    def _next_request(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        if len(self.buf) < end + 4 + length:
            return
        recv_ns = time.perf_counter_ns()
        body = self.buf[end + 4 : end + 4 + length]
        self.buf = self.buf[end + 4 + length :]
        method, _, rest = head[0].partition(" ")
        target = rest.rsplit(" ", 1)[0]
        self.close_after = headers.get("connection", "").lower() == "close"
        self.busy = True
        self._route(method, target, headers, body, recv_ns)

    def _done(self) -> None:
        self.busy = False
        self.handle = None
        if self.close_after and self.transport is not None:
            self.transport.close()
            return
        if self.buf:
            self._next_request()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _respond(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        reason = _STATUS_TEXT.get(status, "Status")
        self._write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self._done()

    # ---- routes ----------------------------------------------------------------------------

    def _route(
        self, method: str, target: str, headers: dict[str, str], body: bytes, recv_ns: int
    ) -> None:
        path, _, query = target.partition("?")
        c = self.s.config
        if method == "GET" and path in ("/health", "/ping"):
            return self._respond(200, b"ok", "text/plain")
        if method == "GET" and path == "/v1/models":
            models = {"object": "list", "data": [{"id": c.model, "object": "model"}]}
            return self._respond(200, json.dumps(models).encode())
        if method == "GET" and path == "/stamps":
            out = json.dumps(self.s.stamps).encode()
            if "reset" in query:
                self.s.stamps = {}
            return self._respond(200, out)
        if method != "POST" or path not in (
            "/v1/completions",
            "/v1/chat/completions",
            "/v1/embeddings",
        ):
            return self._respond(404, b'{"error": {"message": "not found"}}')
        try:
            req = json.loads(body)
        except ValueError:
            return self._respond(400, b'{"error": {"message": "bad json"}}')
        self.s.counter += 1
        rid = headers.get("x-request-id") or str(self.s.counter)
        stamp: list[Any] = [recv_ns, []]
        self.s.stamps[rid] = stamp
        if c.on_request is not None:
            c.on_request(rid)
        max_tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
        if max_tokens in c.hang:
            return  # never answer; the client's deadline ends it
        if max_tokens in c.fail:
            msg = json.dumps({"error": {"message": "stub failure", "code": c.fail[max_tokens]}})
            return self._respond(c.fail[max_tokens], msg.encode())
        if path == "/v1/embeddings":
            return self._embed(req)
        n = c.tokens or max_tokens
        chat = path == "/v1/chat/completions"
        if req.get("stream"):
            usage = bool((req.get("stream_options") or {}).get("include_usage"))
            self._stream(rid, n, chat, usage, _prompt_tokens(req), stamp[1])
        else:
            delay = c.ttft_s + (n - 1) * c.itl_s
            self.handle = self.loop.call_later(delay, self._whole, n, chat, _prompt_tokens(req))

    def _embed(self, req: dict[str, Any]) -> None:
        items = req.get("input")
        texts = items if isinstance(items, list) else [items]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.0] * 8} for i in range(len(texts))
        ]
        tokens = sum(len(str(t)) // 4 + 1 for t in texts)
        body = {
            "object": "list",
            "data": data,
            "model": self.s.config.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        self.handle = self.loop.call_later(
            self.s.config.embed_s, self._respond, 200, json.dumps(body).encode()
        )

    def _whole(self, n: int, chat: bool, prompt_tokens: int) -> None:
        text = " tok" * n
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n}
        self._respond(200, json.dumps({"id": "stub", "choices": [choice], "usage": usage}).encode())

    def _stream(
        self, rid: str, n: int, chat: bool, usage: bool, prompt_tokens: int, writes: list[int]
    ) -> None:
        self._write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        c = self.s.config
        obj = "chat.completion.chunk" if chat else "text_completion"
        if chat:
            body = '"choices":[{"index":0,"delta":{"content":" tok"},"finish_reason":%s}]'
        else:
            body = '"choices":[{"index":0,"text":" tok","logprobs":null,"finish_reason":%s}]'
        head = f'{{"id":"cmpl-{rid}","object":"{obj}","created":0,"model":"{c.model}",'
        token = _frame(b"data: %s%s}\n\n" % (head.encode(), (body % "null").encode()))
        last = _frame(b"data: %s%s}\n\n" % (head.encode(), (body % '"length"').encode()))
        tail = b""
        if usage:
            u = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n,
                "total_tokens": prompt_tokens + n,
            }
            usage_json = json.dumps(u, separators=(",", ":"))
            tail += _frame(f'data: {head}"choices":[],"usage":{usage_json}}}\n\n'.encode())
        tail += _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        t0 = self.loop.time() + c.ttft_s

        def tick(k: int) -> None:
            writes.append(time.perf_counter_ns())
            if k < n - 1:
                self._write(token)
                self.handle = self.loop.call_at(t0 + (k + 1) * c.itl_s, tick, k + 1)
            else:
                self._write(last + tail)
                self._done()

        self.handle = self.loop.call_at(t0, tick, 0)


def _frame(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _prompt_tokens(req: dict[str, Any]) -> int:
    p = req.get("prompt")
    if isinstance(p, list):
        return len(p)
    if isinstance(p, str):
        return len(p) // 4 + 1
    msgs = req.get("messages") or []
    return sum(len(str(m.get("content", ""))) // 4 + 1 for m in msgs if isinstance(m, dict))


async def serve(
    config: StubConfig, host: str = "127.0.0.1", port: int = 0
) -> tuple[asyncio.Server, StubState]:
    state = StubState(config)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(state), host, port, backlog=4096)
    return server, state


class StubServer:
    """The stub on its own event loop in a thread (for tests): ``with StubServer(cfg) as s``."""

    def __init__(self, config: StubConfig | None = None) -> None:
        self.config = config or StubConfig()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._state: StubState | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> StubServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server, self._state = self._loop.run_until_complete(serve(self.config))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="stub-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the stub server did not start")
        return self

    def stamps(self) -> dict[str, list[Any]]:
        loop, state = self._loop, self._state
        assert loop is not None and state is not None

        async def get() -> dict[str, list[Any]]:
            return dict(state.stamps)

        return asyncio.run_coroutine_threadsafe(get(), loop).result(5)

    def __exit__(self, *exc: object) -> None:
        loop, server, state = self._loop, self._server, self._state
        if loop is None:
            return

        async def stop() -> None:
            if server is not None:
                server.close()
            for conn in list(state.open_connections if state else ()):
                if conn.transport is not None:
                    conn.transport.close()
            await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()


def _main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed on stdout)")
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--tokens", type=int, default=None, help="output tokens (default: max_tokens)")
    a = p.parse_args(argv)
    cfg = StubConfig(ttft_s=a.ttft_ms / 1e3, itl_s=a.itl_ms / 1e3, tokens=a.tokens)
    run: Callable[[Any], Any] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run

    async def main() -> None:
        server, _ = await serve(cfg, a.host, a.port)
        print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        run(main())


if __name__ == "__main__":
    _main()
