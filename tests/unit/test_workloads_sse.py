"""The one SSE parser: split reads, line ends, multi-line data, OpenAI streams."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from workloads.sse import OpenAIStream, SSEParser


def _chunk(text: str, finish: str | None = None) -> dict:
    return {
        "id": "c",
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": finish}],
    }


def _stream(n: int, *, usage: bool = True, compact: bool = True) -> bytes:
    sep = (",", ":") if compact else (", ", ": ")
    events = [
        json.dumps(_chunk(f" t{i}", "length" if i == n - 1 else None), separators=sep)
        for i in range(n)
    ]
    if usage:
        u = {
            "id": "c",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n},
        }
        events.append(json.dumps(u, separators=sep))
    events.append("[DONE]")
    return "".join(f"data: {e}\n\n" for e in events).encode()


def _feed_split(stream: OpenAIStream, data: bytes, cuts: list[int]) -> int:
    total = 0
    prev = 0
    for c in sorted(set(cuts)) + [len(data)]:
        total += stream.feed(data[prev:c])
        prev = c
    return total + stream.finish()


@given(
    st.lists(st.integers(0, 2000), max_size=40),
    st.booleans(),
    st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_split_anywhere_same_result(cuts: list[int], compact: bool, eol: str) -> None:
    data = _stream(12, compact=compact).decode().replace("\n", eol).encode()
    s = OpenAIStream()
    assert _feed_split(s, data, [c for c in cuts if c <= len(data)]) == 12
    assert s.tokens == 12 and s.done and s.error is None
    assert s.completion_tokens == 12 and s.prompt_tokens == 5


def test_crlf_split_between_cr_and_lf() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\n\r") == []
    assert p.feed(b"\ndata: b\r\n\r\n") == [b"a", b"b"]


def test_multiline_data_comments_and_other_fields() -> None:
    p = SSEParser()
    out = p.feed(b': keep-alive\n\nevent: x\nid: 3\ndata: {"a":\ndata:1}\nretry: 10\n\n')
    assert out == [b'{"a":\n1}']
    assert p.feed(b"data\n\n") == [b""]
    assert p.feed(b"data2: nope\n\n") == []


def test_finish_returns_an_unterminated_event() -> None:
    p = SSEParser()
    assert p.feed(b"data: [DONE]") == []
    assert p.finish() == [b"[DONE]"]


def test_chat_role_preamble_is_not_a_token() -> None:
    s = OpenAIStream(chat=True)
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    tok = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
    first = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "hey"}}]}
    data = b"".join(b"data: " + json.dumps(x).encode() + b"\n\n" for x in (role, tok, first))
    assert s.feed(data) == 2


def test_usage_error_and_empty_text_chunks() -> None:
    s = OpenAIStream()
    assert (
        s.feed(b'data: {"choices":[{"index":0,"text":""}]}\n\n') == 1
    )  # a token that decodes to nothing
    assert s.feed(b'data: {"error": {"message": "engine died", "code": 500}}\n\n') == 0
    assert s.error == "engine died"
    assert s.feed(b"data: nonsense\n\n") == 0
    assert s.error is not None and "undecodable" in s.error
    assert s.completion_tokens is None
