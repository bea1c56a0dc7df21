"""The request shapes a workload asks for, read off its spec without building a trace: the
longest lengths (what the warm-up sends: ``orchestrator.warmup``) and the mean output length
(Little's law's time in service: ``cotenant plan``'s batch-limit notes). The "longest" length
of a normal or lognormal distribution is its 99th percentile, within the bounds."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workloads.spec import (
    EmpiricalLen,
    FixedLen,
    LengthDist,
    LognormalLen,
    NormalLen,
    SyntheticWorkload,
    TraceWorkload,
    UniformLen,
)

if TYPE_CHECKING:
    import polars as pl

HIGH_QUANTILE = 0.99  # the "longest" length of a normal or lognormal
Z_HIGH = statistics.NormalDist().inv_cdf(HIGH_QUANTILE)


@dataclass(frozen=True)
class Longest:
    """The largest request shapes a workload asks for."""

    input_tokens: int
    output_tokens: int
    batch_size: int


def dist_high(d: LengthDist, base: Path | None = None) -> int:
    """The longest length a distribution asks for (see the module doc)."""
    if isinstance(d, FixedLen):
        return d.value
    if isinstance(d, UniformLen):
        return d.high
    if isinstance(d, NormalLen | LognormalLen):
        x = (d.mean + Z_HIGH * d.std if isinstance(d, NormalLen)
             else d.median * math.exp(Z_HIGH * d.sigma))
        return _clip(math.ceil(x), d.low, d.high)
    if isinstance(d, EmpiricalLen):
        from workloads.generators import empirical_pool

        return _clip(int(empirical_pool(d, base).max()), d.low, d.high)
    raise TypeError(f"unknown length distribution {d!r}")


def dist_mean(d: LengthDist, base: Path | None = None) -> float:
    """The mean length a distribution asks for (bounds applied to the point values)."""
    if isinstance(d, FixedLen):
        return float(d.value)
    if isinstance(d, UniformLen):
        return (d.low + d.high) / 2
    if isinstance(d, NormalLen):
        return float(_clip(d.mean, d.low, d.high))
    if isinstance(d, LognormalLen):
        return float(_clip(d.median * math.exp(d.sigma**2 / 2), d.low, d.high))
    if isinstance(d, EmpiricalLen):
        import numpy as np

        from workloads.generators import empirical_pool

        pool = np.clip(empirical_pool(d, base), d.low, d.high if d.high is not None else np.inf)
        return float(pool.mean())
    raise TypeError(f"unknown length distribution {d!r}")


def _clip(x: float, low: int, high: int | None) -> int:
    v = max(int(math.ceil(x)), low)
    return min(v, high) if high is not None else v


def trace_lengths(w: TraceWorkload, tenant: str | None, base: Path) -> pl.DataFrame:
    """A trace workload's requests after its transforms (the lengths it will ask)."""
    import polars as pl

    from workloads.importers import cached_trace
    from workloads.transforms import apply_transforms

    path = Path(w.path).expanduser()
    if not path.is_absolute():
        path = base / path
    df = cached_trace(path, w.format, w.skip_bad_rows, w.skip_failed, None)
    if tenant is not None and (df["tenant"] == tenant).any():
        df = df.filter(pl.col("tenant") == tenant)
    return apply_transforms(df, w.transforms)


def longest(w: SyntheticWorkload | TraceWorkload, base: Path, tenant: str | None = None) -> Longest:
    """The largest input, output and batch size ``w`` asks for."""
    if isinstance(w, SyntheticWorkload):
        return Longest(dist_high(w.input_tokens, base), dist_high(w.output_tokens, base),
                       dist_high(w.batch_size, base))
    import polars as pl

    df = trace_lengths(w, tenant, base)
    if df.height == 0:
        return Longest(1, 1, 1)
    top = df.select(pl.col("input_tokens").max(), pl.col("output_tokens").max(),
                    pl.col("batch_size").fill_null(1).max()).row(0)
    return Longest(*(int(v or 1) for v in top))


def mean_output_tokens(w: SyntheticWorkload | TraceWorkload, base: Path,
                       tenant: str | None = None) -> float:
    """The mean output length ``w`` asks for (Little's law needs the mean time in service)."""
    if isinstance(w, SyntheticWorkload):
        return dist_mean(w.output_tokens, base)
    df = trace_lengths(w, tenant, base)
    return float(df["output_tokens"].mean() or 1.0) if df.height else 1.0  # type: ignore[arg-type]
