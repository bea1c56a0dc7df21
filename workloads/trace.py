"""Traces: one row a request, as a Polars frame, saved as Parquet or JSONL.

| column | type | meaning |
| --- | --- | --- |
| arrival_s | f64 | seconds from the trace's start (>= 0), sorted |
| tenant | str | who receives it; null until assigned |
| kind | str | ``completion`` or ``embedding`` |
| input_tokens | i64 | prompt tokens (embedding: tokens of each item) |
| output_tokens | i64 | tokens to generate (embedding: 0) |
| prompt | str | the request's own text, if the source had one (else synthesised) |
| batch_size | i64 | embedding: items in the request; null for completions |

Other columns that a source carried (BurstGPT's ``Model`` and ``Log Type``) are kept
after these, so that tenants can be assigned by them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rundir.io import atomic_write_bytes, atomic_write_parquet
from workloads._rows import BadValue, RowReader, cotenant_record, json_object, text_lines
from workloads.errors import TraceFormatError

TRACE_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "arrival_s": pl.Float64,
    "tenant": pl.Utf8,
    "kind": pl.Utf8,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "prompt": pl.Utf8,
    "batch_size": pl.Int64,
}
KINDS = ("completion", "embedding")
REQUIRED = ("arrival_s", "input_tokens", "output_tokens")
SUFFIXES = (".parquet", ".jsonl", ".ndjson")


def empty_trace() -> pl.DataFrame:
    return pl.DataFrame(schema=TRACE_SCHEMA)


def make_trace(
    arrival_s: Sequence[float] | np.ndarray,
    *,
    input_tokens: Sequence[int] | np.ndarray,
    output_tokens: Sequence[int] | np.ndarray,
    tenant: str | Sequence[str | None] | None = None,
    kind: str | Sequence[str] = "completion",
    prompt: Sequence[str | None] | None = None,
    batch_size: Sequence[int | None] | np.ndarray | None = None,
    extra: dict[str, Sequence[Any]] | None = None,
    source: str = "<trace>",
) -> pl.DataFrame:
    """Build a validated, sorted trace from columns; scalars (tenant, kind) are broadcast."""
    n = len(arrival_s)
    cols: dict[str, Any] = {
        "arrival_s": pl.Series("arrival_s", arrival_s, dtype=pl.Float64),
        "tenant": _broadcast("tenant", tenant, n, pl.Utf8),
        "kind": _broadcast("kind", kind, n, pl.Utf8),
        "input_tokens": pl.Series("input_tokens", input_tokens, dtype=pl.Int64),
        "output_tokens": pl.Series("output_tokens", output_tokens, dtype=pl.Int64),
        "prompt": _broadcast("prompt", prompt, n, pl.Utf8),
        "batch_size": _broadcast("batch_size", batch_size, n, pl.Int64),
    }
    for name, values in (extra or {}).items():
        cols[name] = pl.Series(name, values)
    return normalize_trace(pl.DataFrame(cols), source=source)


def _broadcast(name: str, v: Any, n: int, dtype: Any) -> pl.Series:
    if v is None or isinstance(v, str):
        return pl.Series(name, [v] * n, dtype=dtype)
    return pl.Series(name, v, dtype=dtype)


def normalize_trace(df: pl.DataFrame, *, source: str = "<trace>") -> pl.DataFrame:
    """Check a frame against the trace schema: add optional columns, cast, validate, sort.

    Errors name the row (``row N``, 1-based, in the frame's order) and the column.
    """
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise TraceFormatError(source, f"missing column(s): {', '.join(missing)}")
    n = df.height
    for name, dtype in TRACE_SCHEMA.items():
        if name not in df.columns:
            default: Any = "completion" if name == "kind" else None
            df = df.with_columns(pl.Series(name, [default] * n, dtype=dtype))
        elif df.schema[name] != dtype:
            found = df.schema[name]
            try:
                cast = df.with_columns(pl.col(name).cast(dtype, strict=True))
            except pl.exceptions.PolarsError:
                cast = None
            # a struct or list column "casts" field by field and stays nested: refuse it too
            if cast is None or cast.schema[name] != dtype:
                bad = None if found.is_nested() else _first_cast_failure(df[name], dtype)
                where = f"row {bad + 1}: " if bad is not None else ""
                raise TraceFormatError(
                    source, f"{where}not a valid {dtype} (the column holds {found})", column=name
                )
            df = cast
    _validate(df, source)
    df = df.with_columns(
        pl.when(pl.col("kind") == "embedding")
        .then(pl.col("batch_size").fill_null(1))
        .otherwise(None)
        .alias("batch_size")
    )
    extras = [c for c in df.columns if c not in TRACE_SCHEMA]
    return df.select([*TRACE_SCHEMA, *extras]).sort("arrival_s", maintain_order=True)


def _first_cast_failure(s: pl.Series, dtype: Any) -> int | None:
    """The first row whose value does not cast; None when the whole column's type cannot
    (a struct or binary column where a number is expected)."""
    try:
        cast = s.cast(dtype, strict=False)
    except pl.exceptions.PolarsError:
        return None
    bad = (cast.is_null() & s.is_not_null()).arg_true()
    return int(bad[0]) if len(bad) else None


def _validate(df: pl.DataFrame, source: str) -> None:
    checks = [
        ("arrival_s", pl.col("arrival_s").is_null(), "missing"),
        ("arrival_s", ~pl.col("arrival_s").is_finite(), "not a finite number"),
        ("arrival_s", pl.col("arrival_s") < 0, "negative"),
        ("kind", ~pl.col("kind").is_in(KINDS), f"not one of {', '.join(KINDS)}"),
        ("input_tokens", pl.col("input_tokens").is_null(), "missing"),
        ("input_tokens", pl.col("input_tokens") < 0, "negative"),
        ("output_tokens", pl.col("output_tokens").is_null(), "missing"),
        ("output_tokens", pl.col("output_tokens") < 0, "negative"),
        ("batch_size", pl.col("batch_size") < 1, "below 1"),
    ]
    flags = df.select(
        [
            expr.fill_null(False).arg_true().first().alias(str(i))
            for i, (_, expr, _) in enumerate(checks)
        ]
    ).row(0)
    hits = [(row, checks[i]) for i, row in enumerate(flags) if row is not None]
    if hits:
        row, (column, _, what) = min(hits, key=lambda h: h[0])
        raise TraceFormatError(source, f"row {row + 1}: {what}", column=column)


# ---- files ---------------------------------------------------------------------------------


def save_trace(df: pl.DataFrame, path: str | Path) -> Path:
    """Write a trace as Parquet (``.parquet``) or JSONL (``.jsonl``/``.ndjson``), atomically."""
    path = Path(path)
    df = normalize_trace(df, source=str(path))
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        atomic_write_parquet(path, df)
    elif suffix in (".jsonl", ".ndjson"):
        buf = io.BytesIO()
        df.write_ndjson(buf)
        atomic_write_bytes(path, buf.getvalue())
    else:
        raise TraceFormatError(
            path,
            f"cannot tell how to write {suffix or 'no suffix'}: use one of {', '.join(SUFFIXES)}",
        )
    return path


def load_trace(path: str | Path) -> pl.DataFrame:
    """Read a trace written by `save_trace` (Parquet or JSONL, chosen by the suffix).

    Other formats (Azure, BurstGPT, Mooncake, ShareGPT) go through `workloads.importers`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            df = pl.read_parquet(path)
        except FileNotFoundError:
            raise TraceFormatError(path, "no such file") from None
        except IsADirectoryError:
            raise TraceFormatError(path, "is a folder, not a trace file") from None
        except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError) as e:
            # a damaged file can make the Parquet reader panic (a BaseException)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TraceFormatError(path, f"not a readable Parquet file: {msg}") from None
        return normalize_trace(df, source=str(path))
    if suffix in (".jsonl", ".ndjson"):
        return _load_jsonl(path)
    raise TraceFormatError(path, f"not a cotenant trace ({', '.join(SUFFIXES)})")


def _load_jsonl(path: Path) -> pl.DataFrame:
    return read_cotenant_jsonl(path, RowReader(path, skip_bad_rows=False))[0]


def read_cotenant_jsonl(path: Path, rows: RowReader) -> tuple[pl.DataFrame, int]:
    """cotenant's own JSONL: one trace row a line (what `save_trace` writes)."""
    records: list[dict[str, Any]] = []
    n = 0
    for line, text in enumerate(text_lines(path, rows), start=1):
        if not text.strip():
            continue
        n += 1
        try:
            records.append(cotenant_record(json_object(text)))
        except BadValue as e:
            rows.bad(line, e)
    if not records:
        return empty_trace(), n
    names: list[str] = list(TRACE_SCHEMA)
    for r in records:
        names.extend(k for k in r if k not in names)
    cols = {
        name: pl.Series(
            name, [r.get(name) for r in records], dtype=TRACE_SCHEMA.get(name), strict=False
        )
        for name in names
    }
    return normalize_trace(pl.DataFrame(cols), source=str(path)), n


# ---- statistics ----------------------------------------------------------------------------


def trace_rate(arrivals: np.ndarray | pl.Series) -> float | None:
    """Mean rate of a sorted arrival sequence: (n - 1) / (last - first); None below 2."""
    a = np.asarray(arrivals, dtype=float)
    if a.size < 2:
        return None
    span = float(a[-1] - a[0])
    return (a.size - 1) / span if span > 0 else math.inf


def trace_period(arrivals: np.ndarray | pl.Series) -> float:
    """How long a trace lasts when repeated: last arrival plus one mean gap (first at 0)."""
    a = np.asarray(arrivals, dtype=float)
    if a.size == 0:
        return 0.0
    if a.size == 1:
        return max(float(a[0]), 0.0) + 1.0
    return float(a[-1]) * a.size / (a.size - 1)


def trace_stats(df: pl.DataFrame) -> pl.DataFrame:
    """Per tenant (and ``(all)`` when there are several): requests, duration, rate,
    burstiness (coefficient of variation of the gaps; 1 for Poisson), and the input and
    output lengths' p50/p90/p99."""
    df = normalize_trace(df)
    tenant = pl.col("tenant").fill_null("(none)")
    groups = [df.with_columns(tenant.alias("tenant"))]
    if df["tenant"].n_unique() > 1:
        groups.append(df.with_columns(pl.lit("(all)").alias("tenant")))
    both = pl.concat(groups)
    gap = pl.col("arrival_s").diff()
    n = pl.len()
    span = pl.col("arrival_s").max() - pl.col("arrival_s").min()
    q = [0.5, 0.9, 0.99]
    lengths = [
        pl.col(f"{col}_tokens")
        .quantile(p, "nearest")
        .cast(pl.Int64)
        .alias(f"{col}_p{round(p * 100)}")
        for col in ("input", "output")
        for p in q
    ]
    out = (
        both.sort("arrival_s", maintain_order=True)
        .group_by("tenant", maintain_order=True)
        .agg(
            n.cast(pl.Int64).alias("requests"),
            span.alias("duration_s"),
            pl.when(n > 1).then((n - 1) / span).otherwise(None).alias("rate"),
            (gap.std() / gap.mean()).alias("burstiness"),
            *lengths,
        )
        .sort(pl.col("tenant") == "(all)", "tenant")
    )
    return out.with_columns(
        pl.when(pl.col("rate").is_infinite()).then(None).otherwise(pl.col("rate")).alias("rate")
    )
