"""Repetitions: experiments that differ only by repetition form a group; mean and 95% t CI.

A group's interval is too wide to rank on when it has one repetition, or when its
half-width is above ``stats.MAX_REL_HALF_WIDTH`` (10%) of its mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import polars as pl

from reports.stats import LEVEL, MAX_REL_HALF_WIDTH, t_quantile

TENANT_KEYS = (
    "group_id",
    "tenant",
    "tenant_kind",
    "active_set",
    "resident_set",
    "n_active",
    "colocated",
    "rate_scale",
)
DEVICE_KEYS = ("group_id", "active_set", "resident_set", "rate_scale")

STATS_SCHEMA: dict[str, Any] = {
    "metric": pl.Utf8,
    "n": pl.Int64,
    "mean": pl.Float64,
    "sd": pl.Float64,
    "ci_lo": pl.Float64,
    "ci_hi": pl.Float64,
    "half_width": pl.Float64,
    "rel_half_width": pl.Float64,
    "too_wide": pl.Boolean,
}


def group_stats(table: pl.DataFrame, metrics: Sequence[str], keys: Sequence[str] = TENANT_KEYS) -> pl.DataFrame:
    """Long form: one row per group (``keys``) x metric with n, mean, sd and the t interval.

    Repetitions whose value is null (a figure that does not apply, or no ok request) are
    left out of that metric's n.
    """
    present = [m for m in metrics if m in table.columns]
    keys = [k for k in keys if k in table.columns]
    if not present or table.height == 0:
        schema: dict[str, Any] = {k: table.schema[k] for k in keys}
        return pl.DataFrame(schema=schema | STATS_SCHEMA)
    long = (
        table.select(*keys, *[pl.col(m).cast(pl.Float64) for m in present])
        .unpivot(on=present, index=keys, variable_name="metric", value_name="value")
        .filter(pl.col("value").is_not_null() & pl.col("value").is_not_nan())
    )
    g = long.group_by(*keys, "metric", maintain_order=True).agg(
        pl.len().cast(pl.Int64).alias("n"),
        pl.col("value").mean().alias("mean"),
        pl.col("value").std(ddof=1).alias("sd"),
    )
    tq = {int(n): t_quantile(0.5 + LEVEL / 2, int(n) - 1) for n in g["n"].unique() if n >= 2}
    hw = (
        pl.when(pl.col("n") >= 2)
        .then(
            pl.col("n").replace_strict(tq, default=None, return_dtype=pl.Float64)
            * pl.col("sd")
            / pl.col("n").cast(pl.Float64).sqrt()
        )
        .otherwise(None)
    )
    g = g.with_columns(half_width=hw)
    g = g.with_columns(
        ci_lo=pl.col("mean") - pl.col("half_width"),
        ci_hi=pl.col("mean") + pl.col("half_width"),
        rel_half_width=pl.when(pl.col("mean") != 0).then(pl.col("half_width") / pl.col("mean").abs()),
    )
    too_wide = (
        (pl.col("n") < 2)
        | (pl.col("rel_half_width").is_not_null() & (pl.col("rel_half_width") > MAX_REL_HALF_WIDTH))
        | (pl.col("rel_half_width").is_null() & (pl.col("half_width").fill_null(0) > 0))
    )
    g = g.with_columns(too_wide=too_wide)
    return g.select(*keys, *STATS_SCHEMA).cast(STATS_SCHEMA)  # type: ignore[arg-type]


def lookup(stats: pl.DataFrame) -> dict[tuple[str, str, str], dict[str, float | int | bool | None]]:
    """(group_id, tenant, metric) -> {n, mean, sd, ci_lo, ci_hi, too_wide}."""
    out: dict[tuple[str, str, str], dict[str, float | int | bool | None]] = {}
    for r in stats.iter_rows(named=True):
        out[(r["group_id"], r.get("tenant", ""), r["metric"])] = {
            k: r[k] for k in ("n", "mean", "sd", "ci_lo", "ci_hi", "half_width", "too_wide")
        }
    return out


def pm(mean: float | None, half_width: float | None) -> tuple[float | None, float | None]:
    """Helper for text: (mean, half-width), NaN turned into None."""
    def clean(v: float | None) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    return clean(mean), clean(half_width)
