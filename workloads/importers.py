"""Importers of public trace formats into cotenant traces (`workloads.trace`).

| format | file | times | lengths |
| --- | --- | --- | --- |
| ``azure`` | Azure LLM inference 2023/2024 CSV: ``TIMESTAMP,ContextTokens,GeneratedTokens`` | date-time text (7 fractional digits) or seconds | ContextTokens, GeneratedTokens |
| ``burstgpt`` | BurstGPT CSV: ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`` | seconds | Request/Response tokens; ``Model`` and ``Log Type`` are kept |
| ``mooncake`` | Mooncake JSONL: ``{"timestamp": ms, "input_length", "output_length", ...}`` | milliseconds | input/output_length |
| ``sharegpt`` | ShareGPT JSON (an array, or JSONL) of ``{"conversations": [{"from", "value"}, ...]}`` | none: one a second | first turn and its reply, counted with a tokenizer folder, else characters / 4 |
| ``cotenant`` | cotenant's own ``.parquet`` / ``.jsonl`` | seconds | as written |

``auto`` tells them apart by the suffix, the header, or the first record. Arrival times
start at 0 at the first request. A malformed row raises `TraceFormatError` naming the
file, line and column; with ``skip_bad_rows`` it is skipped and counted instead.
BurstGPT rows with 0 response tokens are failed requests; ``skip_failed`` drops them.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workloads._rows import (
    BadValue,
    RowReader,
    csv_rows,
    float_field,
    int_field,
    json_object,
    open_trace,
    seconds_ns,
    text_field,
    text_lines,
    timestamp_ns,
)
from workloads.errors import TraceFormatError
from workloads.trace import load_trace, make_trace, read_cotenant_jsonl

FORMATS = ("cotenant", "azure", "burstgpt", "mooncake", "sharegpt")
CHARS_PER_TOKEN = 4
"""Without a tokenizer, ShareGPT text is counted as ceil(characters / 4) tokens."""


@dataclass(frozen=True)
class ImportResult:
    trace: pl.DataFrame
    format: str
    rows: int  # data rows read (bad and filtered ones included)
    bad_rows: int  # malformed rows skipped (``skip_bad_rows``)
    filtered_rows: int  # well-formed rows left out: failed requests, conversations without reply
    first_error: str | None  # the first skipped row's error


def import_trace(
    path: str | Path,
    format: str = "auto",
    *,
    skip_bad_rows: bool = False,
    skip_failed: bool = True,
    tokenizer: str | Path | None = None,
) -> ImportResult:
    """Read a trace file of any supported format into a validated cotenant trace."""
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise TraceFormatError(path, f"unknown format {fmt!r} (known: auto, {', '.join(FORMATS)})")
    rows = RowReader(path, skip_bad_rows=skip_bad_rows)
    if fmt == "cotenant":
        if path.suffix.lower() == ".parquet":
            df = load_trace(path)
            return ImportResult(df, fmt, df.height, 0, 0, None)
        df, n = read_cotenant_jsonl(path, rows)
        return ImportResult(df, fmt, n, rows.bad_rows, 0, rows.first_error)
    reader = {"azure": _azure, "burstgpt": _burstgpt, "mooncake": _mooncake}.get(fmt)
    if reader is not None:
        df, n, filtered = reader(path, rows, skip_failed)
    else:
        df, n, filtered = _sharegpt(path, rows, tokenizer)
    return ImportResult(df, fmt, n, rows.bad_rows, filtered, rows.first_error)


def read_trace(path: str | Path, format: str = "auto", **options: Any) -> pl.DataFrame:
    """`import_trace` returning only the frame."""
    return import_trace(path, format, **options).trace


def cached_trace(
    path: Path,
    format: str = "auto",
    skip_bad_rows: bool = False,
    skip_failed: bool = True,
    tokenizer: str | Path | None = None,
) -> pl.DataFrame:
    """`read_trace` with a small cache keyed by the file's path, size and mtime."""
    try:
        st = path.stat()
    except OSError:
        st = None  # let the importer name the problem
    key = (str(path.resolve()), st.st_size if st else -1, st.st_mtime_ns if st else -1)
    return _cached(key, format, skip_bad_rows, skip_failed, str(tokenizer) if tokenizer else None)


@functools.lru_cache(maxsize=16)
def _cached(
    key: tuple[str, int, int],
    format: str,
    skip_bad_rows: bool,
    skip_failed: bool,
    tokenizer: str | None,
) -> pl.DataFrame:
    return read_trace(
        key[0], format, skip_bad_rows=skip_bad_rows, skip_failed=skip_failed, tokenizer=tokenizer
    )


# ---- detection -----------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """The format of a trace file, from its suffix, its CSV header or its first record."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return "cotenant"
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except FileNotFoundError:
        raise TraceFormatError(path, "no such file") from None
    except OSError as e:
        raise TraceFormatError(path, f"cannot read: {e.strerror or e}") from None
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    first = text.split("\n", 1)[0].strip()
    if text.startswith("["):
        return "sharegpt"
    if text.startswith("{"):
        try:
            obj = json.loads(first)
        except (ValueError, RecursionError):
            obj = {}
        keys = set(obj) if isinstance(obj, dict) else set()
        if "arrival_s" in keys:
            return "cotenant"
        if {"timestamp", "input_length", "output_length"} <= keys:
            return "mooncake"
        if "conversations" in keys:
            return "sharegpt"
        raise TraceFormatError(
            path, f"a JSON record with keys {sorted(keys)[:8]} is no known trace format", line=1
        )
    header = {h.strip().lower() for h in first.split(",")}
    if {"timestamp", "contexttokens", "generatedtokens"} <= header:
        return "azure"
    if {"timestamp", "request tokens", "response tokens"} <= header:
        return "burstgpt"
    raise TraceFormatError(
        path,
        f"cannot tell the format from the first line {first[:80]!r}; "
        f"name it (one of {', '.join(FORMATS)})",
        line=1,
    )


# ---- CSV formats ---------------------------------------------------------------------------


class _Csv:
    """Header lookup and field access of one CSV file."""

    def __init__(
        self, path: Path, rows: RowReader, required: list[str], optional: list[str]
    ) -> None:
        self.path = path
        self.it = csv_rows(path, rows)
        try:
            line, header = next(self.it)
        except StopIteration:
            raise TraceFormatError(path, "empty file: no header") from None
        self.width = len(header)
        lower = [h.strip().lower() for h in header]
        self.index: dict[str, int] = {}
        for name in required + optional:
            if name.lower() in lower:
                self.index[name] = lower.index(name.lower())
            elif name in required:
                raise TraceFormatError(path, f"no column {name!r} in the header", line=line)

    def records(self) -> Iterator[tuple[int, list[str]]]:
        return self.it

    def check_width(self, row: list[str]) -> None:
        if len(row) != self.width:
            raise BadValue(None, f"expected {self.width} fields, found {len(row)}")


def _relative_s(ns: list[int]) -> np.ndarray:
    if not ns:
        return np.zeros(0)
    a = np.asarray(ns, dtype=np.int64)
    return (a - a.min()).astype(np.float64) / 1e9


def _azure(path: Path, rows: RowReader, _skip_failed: bool) -> tuple[pl.DataFrame, int, int]:
    f = _Csv(path, rows, ["TIMESTAMP", "ContextTokens", "GeneratedTokens"], [])
    its, iin, iout = f.index["TIMESTAMP"], f.index["ContextTokens"], f.index["GeneratedTokens"]
    ts: list[int] = []
    inp: list[int] = []
    out: list[int] = []
    n = 0
    for line, row in f.records():
        n += 1
        try:
            f.check_width(row)
            t = timestamp_ns(row[its], "TIMESTAMP")
            i = int_field(row[iin], "ContextTokens")
            o = int_field(row[iout], "GeneratedTokens")
        except BadValue as e:
            rows.bad(line, e)
            continue
        ts.append(t)
        inp.append(i)
        out.append(o)
    df = make_trace(_relative_s(ts), input_tokens=inp, output_tokens=out, source=str(path))
    return df, n, 0


def _burstgpt(path: Path, rows: RowReader, skip_failed: bool) -> tuple[pl.DataFrame, int, int]:
    f = _Csv(path, rows, ["Timestamp", "Request tokens", "Response tokens"], ["Model", "Log Type"])
    its, iin, iout = f.index["Timestamp"], f.index["Request tokens"], f.index["Response tokens"]
    extras = {name: f.index[name] for name in ("Model", "Log Type") if name in f.index}
    ts: list[int] = []
    inp: list[int] = []
    out: list[int] = []
    extra: dict[str, list[str]] = {name: [] for name in extras}
    n = filtered = 0
    for line, row in f.records():
        n += 1
        try:
            f.check_width(row)
            t = timestamp_ns(row[its], "Timestamp")
            i = int_field(row[iin], "Request tokens")
            o = int_field(row[iout], "Response tokens")
        except BadValue as e:
            rows.bad(line, e)
            continue
        if skip_failed and o == 0:
            filtered += 1
            continue
        ts.append(t)
        inp.append(i)
        out.append(o)
        for name, idx in extras.items():
            extra[name].append(row[idx].strip())
    df = make_trace(
        _relative_s(ts), input_tokens=inp, output_tokens=out, extra=dict(extra), source=str(path)
    )
    return df, n, filtered


# ---- JSON formats --------------------------------------------------------------------------


def _mooncake(path: Path, rows: RowReader, _skip_failed: bool) -> tuple[pl.DataFrame, int, int]:
    ts: list[int] = []
    inp: list[int] = []
    out: list[int] = []
    n = 0
    for line, text in enumerate(text_lines(path, rows), start=1):
        if not text.strip():
            continue
        n += 1
        try:
            obj = json_object(text)
            ms = float_field(_field(obj, "timestamp"), "timestamp")
            t = seconds_ns(ms, "timestamp", scale=1e6)  # milliseconds
            i = int_field(_field(obj, "input_length"), "input_length")
            o = int_field(_field(obj, "output_length"), "output_length")
        except BadValue as e:
            rows.bad(line, e)
            continue
        ts.append(t)
        inp.append(i)
        out.append(o)
    df = make_trace(_relative_s(ts), input_tokens=inp, output_tokens=out, source=str(path))
    return df, n, 0


def _field(obj: dict[str, Any], key: str) -> Any:
    if obj.get(key) is None:
        raise BadValue(key, "missing")
    return obj[key]


_WS = re.compile(r"[ \t\r\n]*")


def _json_array_items(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, item) of each item of a top-level JSON array, without loading it twice."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceFormatError(path, f"not UTF-8 text (byte {e.start + 1})") from None
    except OSError as e:
        raise TraceFormatError(path, f"cannot read: {e.strerror or e}") from None
    dec = json.JSONDecoder()
    i = _WS.match(text, 1 if text.startswith("\ufeff") else 0).end()  # type: ignore[union-attr]
    if text[i : i + 1] != "[":
        raise TraceFormatError(path, "expected a JSON array", line=1)
    line, pos = 1, 0
    i += 1
    while True:
        i = _WS.match(text, i).end()  # type: ignore[union-attr]
        line += text.count("\n", pos, i)
        pos = i
        if text[i : i + 1] == "]":
            return
        try:
            item, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise TraceFormatError(path, f"not valid JSON: {e.msg}", line=e.lineno) from None
        except ValueError as e:  # an integer of more than 4300 digits
            raise TraceFormatError(path, f"not valid JSON: {e}", line=line) from None
        except RecursionError:
            raise TraceFormatError(path, "not valid JSON: nested too deeply", line=line) from None
        yield line, item
        i = _WS.match(text, end).end()  # type: ignore[union-attr]
        if text[i : i + 1] == ",":
            i += 1
        elif text[i : i + 1] != "]":
            where = line + text.count("\n", pos, i)
            raise TraceFormatError(path, "expected ',' or ']' after an item", line=where)


def _sharegpt_items(path: Path, rows: RowReader) -> Iterator[tuple[int, Any]]:
    with open_trace(path) as f:
        start = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(b"["):
        yield from _json_array_items(path)
        return
    for line, text in enumerate(text_lines(path, rows), start=1):
        if text.strip():
            try:
                yield line, json_object(text)
            except BadValue as e:
                rows.bad(line, e)


def _sharegpt(
    path: Path, rows: RowReader, tokenizer: str | Path | None
) -> tuple[pl.DataFrame, int, int]:
    prompts: list[str] = []
    replies: list[str] = []
    n = filtered = 0
    for line, item in _sharegpt_items(path, rows):
        n += 1
        try:
            turns = _turns(item)
        except BadValue as e:
            rows.bad(line, e)
            continue
        if turns is None:
            filtered += 1
            continue
        prompts.append(turns[0])
        replies.append(turns[1])
    if tokenizer is not None:
        from workloads.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer)
        inp = tok.count_batch(prompts)
        out = tok.count_batch(replies)
    else:
        inp = [chars_to_tokens(p) for p in prompts]
        out = [chars_to_tokens(r) for r in replies]
    arrivals = np.arange(len(prompts), dtype=np.float64)
    df = make_trace(arrivals, input_tokens=inp, output_tokens=out, prompt=prompts, source=str(path))
    return df, n, filtered


def _turns(item: Any) -> tuple[str, str] | None:
    """The first turn and its reply; None when the conversation has no reply or is empty."""
    if not isinstance(item, dict):
        raise BadValue(None, f"expected a JSON object, found {type(item).__name__}")
    conv = item.get("conversations")
    if not isinstance(conv, list):
        raise BadValue("conversations", "missing or not a list")
    if len(conv) < 2:
        return None
    texts: list[str] = []
    for turn in conv[:2]:
        if not isinstance(turn, dict):
            raise BadValue("conversations", "a turn is not an object")
        texts.append(text_field(turn.get("value"), "value") or "")
    return (texts[0], texts[1]) if texts[0] and texts[1] else None


def chars_to_tokens(text: str) -> int:
    """The tokenizer-free estimate: ceil(characters / 4), at least 1."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))
