"""Trace transforms: reshape a trace's times and lengths, and assign its requests to tenants.

`apply_transforms` runs a `TraceTransforms` in a fixed order: window (in the source's
own seconds), then time scale, then rate, then the length bounds.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from workloads.errors import WorkloadError
from workloads.spec import TraceTransforms
from workloads.trace import trace_rate


def window(df: pl.DataFrame, start_s: float, end_s: float) -> pl.DataFrame:
    """Keep arrivals in [start_s, end_s), shifted so that start_s becomes 0."""
    if end_s <= start_s:
        raise WorkloadError(f"window [{start_s}, {end_s}) is empty")
    a = pl.col("arrival_s")
    return df.filter((a >= start_s) & (a < end_s)).with_columns(a - start_s)


def time_scale(df: pl.DataFrame, factor: float) -> pl.DataFrame:
    """Multiply arrival times (0.5 = twice as fast)."""
    if not factor > 0:
        raise WorkloadError(f"time scale must be above 0, not {factor}")
    return df.with_columns(pl.col("arrival_s") * factor)


def rescale_rate(df: pl.DataFrame, rate: float) -> pl.DataFrame:
    """Stretch or compress times so that the mean rate ((n - 1) / span) is ``rate``."""
    if not rate > 0:
        raise WorkloadError(f"rate must be above 0, not {rate}")
    current = trace_rate(df["arrival_s"])
    if current is None or not np.isfinite(current):
        return df  # fewer than 2 requests, or all at one instant: no rate to rescale
    first = pl.col("arrival_s").min()
    return df.with_columns((pl.col("arrival_s") - first) * (current / rate))


def bound_lengths(
    df: pl.DataFrame,
    *,
    min_input: int = 1,
    max_input: int | None = None,
    min_output: int = 1,
    max_output: int | None = None,
) -> pl.DataFrame:
    """Clip token counts into [min, max]; embedding rows keep their 0 output tokens."""
    inp = pl.col("input_tokens").clip(min_input, max_input)
    out = pl.col("output_tokens").clip(min_output, max_output)
    out = pl.when(pl.col("kind") == "embedding").then(pl.col("output_tokens")).otherwise(out)
    return df.with_columns(inp, out.alias("output_tokens"))


def apply_transforms(df: pl.DataFrame, t: TraceTransforms) -> pl.DataFrame:
    if t.window is not None:
        df = window(df, *t.window)
    if t.time_scale != 1.0:
        df = time_scale(df, t.time_scale)
    if t.rate is not None:
        df = rescale_rate(df, t.rate)
    return bound_lengths(
        df,
        min_input=t.min_input_tokens,
        max_input=t.max_input_tokens,
        min_output=t.min_output_tokens,
        max_output=t.max_output_tokens,
    )


# ---- tenants -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    """How requests get tenants: ``round-robin`` over names, ``column`` values, or ``weights``."""

    how: Literal["round-robin", "column", "weights"]
    tenants: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    column: str | None = None


_NAME_BAD = re.compile(r"[^a-z0-9_.-]+")


def parse_assignment(text: str, tenants: Sequence[str] = ()) -> Assignment:
    """``round-robin`` (over ``tenants``), ``column:Model``, or ``weights:a=1,b=2``."""
    text = text.strip()
    if text == "round-robin":
        if not tenants:
            raise WorkloadError("round-robin assignment needs tenant names (e.g. --tenants a,b)")
        return Assignment("round-robin", tenants=tuple(tenants))
    if text.startswith("column:") and text[7:]:
        return Assignment("column", column=text[7:])
    if text.startswith("weights:"):
        names: list[str] = []
        weights: list[float] = []
        for part in text[8:].split(","):
            name, _, w = part.partition("=")
            try:
                weight = float(w)
            except ValueError:
                raise WorkloadError(f"weights: {part!r} is not NAME=NUMBER") from None
            if not name.strip() or not weight >= 0:
                raise WorkloadError(f"weights: {part!r} is not NAME=NUMBER (>= 0)")
            names.append(name.strip())
            weights.append(weight)
        if sum(weights) <= 0:
            raise WorkloadError("weights: at least one weight must be above 0")
        return Assignment("weights", tenants=tuple(names), weights=tuple(weights))
    raise WorkloadError(
        f"unknown assignment {text!r}: use round-robin, column:NAME or weights:a=1,b=2"
    )


def tenant_name(value: object) -> str:
    """A column value as a tenant name: lower case, other characters as '-' ("GPT-4" → "gpt-4")."""
    name = _NAME_BAD.sub("-", str(value).strip().lower()).strip("-._")
    return name or "unknown"


def assign_tenants(df: pl.DataFrame, rule: Assignment | str, *, seed: int = 0) -> pl.DataFrame:
    """Set the ``tenant`` column by a rule; weights draw with a numpy Generator from ``seed``."""
    a = parse_assignment(rule) if isinstance(rule, str) else rule
    n = df.height
    if a.how == "round-robin":
        names = [a.tenants[i % len(a.tenants)] for i in range(n)]
        return df.with_columns(pl.Series("tenant", names, dtype=pl.Utf8))
    if a.how == "column":
        if a.column not in df.columns:
            raise WorkloadError(
                f"no column {a.column!r} to assign tenants by (columns: {', '.join(df.columns)})"
            )
        values = df[a.column].cast(pl.Utf8)
        mapping = {v: tenant_name(v) for v in values.unique().to_list()}
        return df.with_columns(values.replace_strict(mapping, return_dtype=pl.Utf8).alias("tenant"))
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(b"assign")]))
    p = np.asarray(a.weights, dtype=float)
    picks = rng.choice(len(a.tenants), size=n, p=p / p.sum())
    return df.with_columns(pl.Series("tenant", [a.tenants[i] for i in picks], dtype=pl.Utf8))
