"""The one server-sent-events parser, used for every streamed response (completions, chat).

Two layers:

- `SSEParser`: bytes in (as they come off the socket, split anywhere), the ``data`` of
  each complete event out. Handles ``\\n``, ``\\r\\n`` and ``\\r`` line ends (also a
  ``\\r\\n`` split across two reads), multi-line ``data:`` fields, comments and the other
  fields (ignored).
- `OpenAIStream`: what an OpenAI-style stream says: how many token chunks each read
  brought, the usage chunk (``stream_options.include_usage``), ``[DONE]`` and error
  events. The same code reads ``/v1/completions`` (``choices[].text``) and
  ``/v1/chat/completions`` (``choices[].delta``); for chat, the role-only first chunk
  that vLLM sends before any content is not a token.

Token chunks of the compact JSON that vLLM writes are recognised without decoding them
(this parser runs tens of thousands of times a second during a replay); anything else
is decoded with the standard library's ``json``.
"""

from __future__ import annotations

import json
from typing import Any

_DONE = b"[DONE]"
_TOKEN_MARK = b'"choices":[{'
_USAGE, _ERROR, _ROLE = b'"usage":{', b'"error"', b'"role"'  # these need decoding


class SSEParser:
    """Incremental SSE parser: ``feed(bytes)`` returns the data of events completed so far."""

    __slots__ = ("_buf", "_data", "_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._data: bytes | None = None
        self._cr = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                # might be the first half of "\r\n": decide when the next read comes
                chunk = chunk[:-1]
                self._cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        out: list[bytes] = []
        start = 0
        find = buf.find
        while True:
            end = find(b"\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 1
            if not line:
                if self._data is not None:
                    out.append(self._data)
                    self._data = None
            elif line.startswith(b"data"):
                self._add_data(line)
            # comments (":...") and other fields (event, id, retry) carry nothing we use
        self._buf = buf[start:]
        return out

    def _add_data(self, line: bytes) -> None:
        if line == b"data":
            value = b""
        elif line[4:5] == b":":
            value = line[6:] if line[5:6] == b" " else line[5:]
        else:
            return  # a field named e.g. "data2": not ours
        self._data = value if self._data is None else self._data + b"\n" + value

    def finish(self) -> list[bytes]:
        """End of stream: an event not closed by a blank line is still returned (lenient)."""
        out: list[bytes] = []
        rest, self._buf = self._buf, b""
        if self._cr:
            self._cr = False
        if rest:
            line = rest.rstrip(b"\r")
            if line.startswith(b"data"):
                self._add_data(line)
        if self._data is not None:
            out.append(self._data)
            self._data = None
        return out


class OpenAIStream:
    """Reads an OpenAI-style completions or chat stream; ``feed`` returns token chunks seen."""

    __slots__ = ("_parser", "_chat", "tokens", "usage", "done", "error", "events")

    def __init__(self, *, chat: bool = False) -> None:
        self._parser = SSEParser()
        self._chat = chat
        self.tokens = 0  # token-bearing chunks so far
        self.usage: dict[str, Any] | None = None
        self.done = False  # "[DONE]" seen
        self.error: str | None = None  # an error event's message
        self.events = 0

    def feed(self, chunk: bytes) -> int:
        """Feed one read; returns how many token chunks it completed."""
        return self._consume(self._parser.feed(chunk))

    def finish(self) -> int:
        return self._consume(self._parser.finish())

    def _consume(self, datas: list[bytes]) -> int:
        n = 0
        for data in datas:
            self.events += 1
            if data == _DONE:
                self.done = True
                continue
            if (
                _TOKEN_MARK in data
                and _USAGE not in data
                and _ERROR not in data
                and _ROLE not in data
            ):
                n += 1  # the common case: a token chunk in compact JSON
                continue
            n += self._decode(data)
        self.tokens += n
        return n

    def _decode(self, data: bytes) -> int:
        try:
            obj = json.loads(data)
        except ValueError:
            self.error = f"undecodable stream event: {data[:200]!r}"
            return 0
        if not isinstance(obj, dict):
            self.error = f"unexpected stream event: {data[:200]!r}"
            return 0
        if obj.get("error") is not None:
            err = obj["error"]
            msg = err.get("message") if isinstance(err, dict) else None
            self.error = str(msg or err)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = obj.get("choices")
        if not choices or not isinstance(choices, list):
            return 0
        if self._chat:
            delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
            if isinstance(delta, dict) and "role" in delta and not _has_content(delta):
                return 0  # the role-only preamble: not a token
        return 1

    @property
    def completion_tokens(self) -> int | None:
        if self.usage is None:
            return None
        v = self.usage.get("completion_tokens")
        return v if isinstance(v, int) else None

    @property
    def prompt_tokens(self) -> int | None:
        if self.usage is None:
            return None
        v = self.usage.get("prompt_tokens")
        return v if isinstance(v, int) else None


def _has_content(delta: dict[str, Any]) -> bool:
    return bool(
        delta.get("content")
        or delta.get("reasoning_content")
        or delta.get("reasoning")
        or delta.get("tool_calls")
    )
