"""Interference: a tenant's figure when co-located divided by the same figure alone.

The baseline of tenant T in a co-located group is the group where T ran alone (active set
{T}) at the same rate scale; among several, the one with the same resident set (shared
residency: everyone resident in both), else the one where only T was resident (exact
residency), else the first. The ratio of the two means gets a 95% interval from
``stats.ratio_ci`` (log-scale delta method over repetitions, Welch df).

``slowdown`` turns every ratio into "how much worse": the ratio itself for latencies, its
inverse for throughput, goodput and SLO attainment. A slowdown whose interval contains 1.0
is "no measurable interference at this load".
"""

from __future__ import annotations

from typing import Any

import polars as pl

from reports.metrics import (
    HEADLINE_DECODER,
    HEADLINE_ENCODER,
    HIGHER_IS_BETTER,
    RATES,
    latency_columns,
)
from reports.stats import ratio_ci

INTERFERENCE_METRICS = [m for m in RATES if m != "error_rate"] + latency_columns()

VERDICT_WORSE = "worse"
VERDICT_BETTER = "better"
VERDICT_NONE = "no measurable interference"
VERDICT_NO_CI = "one repetition: no interval"
VERDICT_NO_BASELINE = "no isolated baseline"

SCHEMA: dict[str, Any] = {
    "group_id": pl.Utf8,
    "active_set": pl.Utf8,
    "resident_set": pl.Utf8,
    "rate_scale": pl.Float64,
    "n_active": pl.Int64,
    "tenant": pl.Utf8,
    "tenant_kind": pl.Utf8,
    "co_tenants": pl.Utf8,
    "metric": pl.Utf8,
    "baseline_group_id": pl.Utf8,
    "n": pl.Int64,
    "mean": pl.Float64,
    "baseline_n": pl.Int64,
    "baseline_mean": pl.Float64,
    "ratio": pl.Float64,
    "ratio_lo": pl.Float64,
    "ratio_hi": pl.Float64,
    "slowdown": pl.Float64,
    "slowdown_lo": pl.Float64,
    "slowdown_hi": pl.Float64,
    "significant": pl.Boolean,
    "verdict": pl.Utf8,
    "headline": pl.Boolean,
}


def groups_meta(exp: pl.DataFrame) -> pl.DataFrame:
    """One row per group: its sets and rate scale."""
    return exp.select("group_id", "active_set", "resident_set", "n_active", "rate_scale").unique(
        maintain_order=True
    )


def baselines(exp: pl.DataFrame) -> dict[tuple[str, str], str]:
    """(co-located group_id, tenant) -> the group_id of that tenant alone (see module doc)."""
    meta = groups_meta(exp).to_dicts()
    alone: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for g in meta:
        if g["n_active"] == 1:
            alone.setdefault((g["active_set"], g["rate_scale"]), []).append(g)
    out: dict[tuple[str, str], str] = {}
    for g in meta:
        for t in g["active_set"].split("+"):
            cands = alone.get((t, g["rate_scale"]), [])
            if not cands:
                continue
            best = next((c for c in cands if c["resident_set"] == g["resident_set"]), None)
            best = best or next((c for c in cands if c["resident_set"] == t), None) or cands[0]
            out[(g["group_id"], t)] = best["group_id"]
    return out


def headline_metrics(kind: str) -> tuple[str, ...]:
    return HEADLINE_ENCODER if kind == "encoder" else HEADLINE_DECODER


def interference_table(exp: pl.DataFrame, stats: pl.DataFrame) -> pl.DataFrame:
    """Every co-located group x tenant x metric against the tenant alone."""
    base = baselines(exp)
    idx = {
        (r["group_id"], r["tenant"], r["metric"]): r
        for r in stats.filter(pl.col("metric").is_in(INTERFERENCE_METRICS)).iter_rows(named=True)
    }
    rows: list[dict[str, Any]] = []
    for (gid, tenant, metric), r in idx.items():
        if not r["colocated"]:
            continue
        others = "+".join(x for x in r["active_set"].split("+") if x != tenant)
        row: dict[str, Any] = {
            "group_id": gid,
            "active_set": r["active_set"],
            "resident_set": r["resident_set"],
            "rate_scale": r["rate_scale"],
            "n_active": r["n_active"],
            "tenant": tenant,
            "tenant_kind": r["tenant_kind"],
            "co_tenants": others,
            "metric": metric,
            "n": r["n"],
            "mean": r["mean"],
            "headline": metric in headline_metrics(r["tenant_kind"]),
        }
        bgid = base.get((gid, tenant))
        b = idx.get((bgid, tenant, metric)) if bgid else None
        if b is None:
            rows.append(row | {"baseline_group_id": bgid, "verdict": VERDICT_NO_BASELINE})
            continue
        ci = ratio_ci(r["mean"], r["sd"], r["n"], b["mean"], b["sd"], b["n"])
        row |= {
            "baseline_group_id": bgid,
            "baseline_n": b["n"],
            "baseline_mean": b["mean"],
            "ratio": ci.ratio,
            "ratio_lo": ci.lo,
            "ratio_hi": ci.hi,
        }
        inv = metric in HIGHER_IS_BETTER
        s, lo, hi = _orient(ci.ratio, ci.lo, ci.hi, inv)
        row |= {"slowdown": s, "slowdown_lo": lo, "slowdown_hi": hi}
        if ci.ratio is None:
            row["verdict"] = VERDICT_NO_BASELINE
        elif lo is None or hi is None:
            row["verdict"] = VERDICT_NO_CI
        else:
            sig = not (lo <= 1.0 <= hi)
            row["significant"] = sig
            row["verdict"] = (VERDICT_WORSE if (s or 1) > 1 else VERDICT_BETTER) if sig else VERDICT_NONE
        rows.append(row)
    return pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)


def _orient(
    r: float | None, lo: float | None, hi: float | None, invert: bool
) -> tuple[float | None, float | None, float | None]:
    if r is None or not invert:
        return r, lo, hi
    if r == 0:
        return None, None, None
    return 1 / r, (1 / hi if hi else None), (1 / lo if lo else None)


def worst_headline(inter: pl.DataFrame) -> pl.DataFrame:
    """Per group x tenant: the headline latency with the largest slowdown that its interval
    confirms (above 1.0); where none is confirmed, the largest point estimate."""
    h = inter.filter(pl.col("headline") & pl.col("slowdown").is_not_null())
    if h.height == 0:
        return h
    confirmed = (pl.col("significant").fill_null(False) & (pl.col("slowdown") > 1)).alias("_c")
    return (
        h.with_columns(confirmed)
        .sort(["_c", "slowdown"], descending=[True, True])
        .group_by("group_id", "tenant", maintain_order=True)
        .first()
        .drop("_c")
    )


def pair_matrix(inter: pl.DataFrame) -> pl.DataFrame:
    """Victim x co-tenant for the pair experiments: the victim's worst headline slowdown."""
    w = worst_headline(inter.filter(pl.col("n_active") == 2))
    cols = [
        "rate_scale",
        "resident_set",
        "tenant",
        "co_tenants",
        "metric",
        "slowdown",
        "slowdown_lo",
        "slowdown_hi",
        "significant",
        "verdict",
    ]
    if w.height == 0:
        return pl.DataFrame(schema={c: SCHEMA[c] for c in cols}).rename(
            {"tenant": "victim", "co_tenants": "co_tenant"}
        )
    return (
        w.select(cols)
        .rename({"tenant": "victim", "co_tenants": "co_tenant"})
        .sort("rate_scale", "victim", "co_tenant")
    )
