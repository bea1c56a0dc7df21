"""Row-by-row reading shared by the importers and the JSONL trace loader.

Every value goes through a converter that raises `BadValue` (column, message); the
reading loop turns it into a `TraceFormatError` naming the file, the line and the
column, or, with ``skip_bad_rows``, skips the row and counts it.
"""

from __future__ import annotations

import calendar
import csv
import datetime
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from workloads.errors import TraceFormatError


class BadValue(Exception):
    def __init__(self, column: str | None, message: str) -> None:
        super().__init__(message)
        self.column = column
        self.message = message


class RowReader:
    """Counts rows and bad rows of one file; raises or skips on a bad row."""

    def __init__(self, path: str | Path, *, skip_bad_rows: bool) -> None:
        self.path = str(path)
        self.skip_bad_rows = skip_bad_rows
        self.bad_rows = 0
        self.first_error: str | None = None

    def bad(self, line: int | None, e: BadValue) -> None:
        err = TraceFormatError(self.path, e.message, line=line, column=e.column)
        if not self.skip_bad_rows:
            raise err
        self.bad_rows += 1
        if self.first_error is None:
            self.first_error = str(err)


def json_object(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as e:  # JSONDecodeError, and integers of more than 4300 digits
        raise BadValue(None, f"not valid JSON: {e}") from None
    except RecursionError:
        raise BadValue(None, "not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadValue(None, f"expected a JSON object, found {type(obj).__name__}")
    return obj


def cotenant_record(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "arrival_s": float_field(_need(obj, "arrival_s"), "arrival_s", nonneg=True),
        "tenant": text_field(obj.get("tenant"), "tenant", nullable=True),
        "kind": text_field(obj.get("kind", "completion"), "kind"),
        "input_tokens": int_field(_need(obj, "input_tokens"), "input_tokens"),
        "output_tokens": int_field(_need(obj, "output_tokens"), "output_tokens"),
        "prompt": text_field(obj.get("prompt"), "prompt", nullable=True),
        "batch_size": None,
    }
    if out["kind"] not in ("completion", "embedding"):
        raise BadValue("kind", f"{out['kind']!r} is not completion or embedding")
    if obj.get("batch_size") is not None:
        out["batch_size"] = int_field(obj["batch_size"], "batch_size", minimum=1)
    for k, v in obj.items():
        if k not in out:
            if isinstance(v, dict | list):
                raise BadValue(k, "extra columns must hold plain values")
            out[k] = v
    return out


def _need(obj: dict[str, Any], key: str) -> Any:
    if key not in obj or obj[key] is None:
        raise BadValue(key, "missing")
    return obj[key]


# ---- converters ----------------------------------------------------------------------------


_MAX_INT = 2**53


def int_field(v: Any, column: str, *, minimum: int = 0) -> int:
    """A whole number >= minimum, from an int, an integral float or text like ``"12"``."""
    if isinstance(v, bool):
        raise BadValue(column, f"expected a whole number, found {v!r}")
    if isinstance(v, int):
        n = v
    elif isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise BadValue(column, f"expected a whole number, found {v!r}")
        n = int(v)
    elif isinstance(v, str):
        s = v.strip()
        try:
            n = int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                raise BadValue(column, f"expected a whole number, found {_show(v)}") from None
            if not math.isfinite(f) or f != int(f):
                raise BadValue(column, f"expected a whole number, found {_show(v)}") from None
            n = int(f)
    else:
        raise BadValue(column, f"expected a whole number, found {type(v).__name__}")
    if n < minimum:
        raise BadValue(column, f"{n} is below {minimum}")
    if n > _MAX_INT:
        raise BadValue(column, f"{n} is too large")
    return n


def float_field(v: Any, column: str, *, nonneg: bool = False) -> float:
    if isinstance(v, bool):
        raise BadValue(column, f"expected a number, found {v!r}")
    if isinstance(v, int | float):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            raise BadValue(column, f"expected a number, found {_show(v)}") from None
    else:
        raise BadValue(column, f"expected a number, found {type(v).__name__}")
    if not math.isfinite(f):
        raise BadValue(column, f"expected a finite number, found {_show(v)}")
    if nonneg and f < 0:
        raise BadValue(column, f"{f} is negative")
    return f


def text_field(v: Any, column: str, *, nullable: bool = False) -> str | None:
    if v is None and nullable:
        return None
    if not isinstance(v, str):
        raise BadValue(column, f"expected text, found {type(v).__name__}")
    return v


_MAX_NS = 2**62
"""Times are kept as int64 nanoseconds and subtracted from the first one: any two within
+-2**62 ns (146 years around 1970) have a difference that fits."""


def seconds_ns(seconds: float, column: str, *, scale: float = 1e9) -> int:
    """``seconds * scale`` as whole nanoseconds (``scale=1e6`` for milliseconds), refusing
    times that are not finite or more than 146 years from 1970 (they overflow int64)."""
    ns = seconds * scale
    if not math.isfinite(ns) or abs(ns) > _MAX_NS:
        raise BadValue(column, f"time {seconds!r} is out of range (more than 146 years from 1970)")
    return round(ns)


_DATETIME = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?"
)


def timestamp_ns(v: Any, column: str) -> int:
    """Nanoseconds from a number of seconds, or from date-time text.

    Date-time text may carry up to 9 fractional digits (the Azure traces have 7, which
    ``datetime.fromisoformat`` refuses) and an optional ``Z``/``+hh:mm`` offset; without
    an offset it is read as UTC. Only differences between rows are used.
    """
    if isinstance(v, int | float) and not isinstance(v, bool):
        return seconds_ns(float_field(v, column), column)
    if not isinstance(v, str):
        raise BadValue(column, f"expected a time, found {type(v).__name__}")
    s = v.strip()
    m = _DATETIME.fullmatch(s)
    if m is None:
        try:
            f = float_field(s, column)
        except BadValue:
            raise BadValue(column, f"expected a date-time or seconds, found {_show(v)}") from None
        return seconds_ns(f, column)
    y, mo, d, hh, mm, ss, frac, tz = m.groups()
    try:
        dt = datetime.datetime(int(y), int(mo), int(d), int(hh), int(mm), int(ss))
    except ValueError:
        raise BadValue(column, f"not a valid date-time: {_show(v)}") from None
    secs = calendar.timegm(dt.timetuple())
    ns = secs * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        ns -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60) * 1_000_000_000
    if abs(ns) > _MAX_NS:
        raise BadValue(column, f"time {_show(v)} is out of range (more than 146 years from 1970)")
    return ns


def _show(v: Any, limit: int = 40) -> str:
    """A value for an error message: repr, cut at ``limit`` characters (any type: a JSON
    record may hold a float or a list where text was expected)."""
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


# ---- files ---------------------------------------------------------------------------------


def open_trace(path: str | Path) -> BinaryIO:
    """Open a trace file for reading bytes; a missing file, a folder or an unreadable file is
    a `TraceFormatError` naming it."""
    try:
        return open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise TraceFormatError(path, "no such file") from None
    except IsADirectoryError:
        raise TraceFormatError(path, "is a folder, not a trace file") from None
    except OSError as e:
        raise TraceFormatError(path, f"cannot read: {e.strerror or e}") from None


def text_lines(path: str | Path, rows: RowReader) -> Iterator[str]:
    """The file's lines as text; a line that is not UTF-8 is a bad row (blank if skipped)."""
    with open_trace(path) as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                rows.bad(line_no, BadValue(None, f"not UTF-8 text (byte {e.start + 1})"))
                yield "\n"
                continue
            if line_no == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield text


def csv_rows(path: str | Path, rows: RowReader) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of each non-blank CSV record, the header included."""
    reader = csv.reader(text_lines(path, rows))
    while True:
        before = reader.line_num
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if reader.line_num == before:
                raise TraceFormatError(path, f"not valid CSV: {e}", line=before + 1) from None
            rows.bad(reader.line_num, BadValue(None, f"not valid CSV: {e}"))
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        yield reader.line_num, row
