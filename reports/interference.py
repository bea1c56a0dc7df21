"""Interference: a tenant's figure co-located against the same figure alone, paired by block.

The baseline of tenant T in a co-located group is the group where T ran alone (active set
{T}) at the same rate scale; among several, the one with the same resident set (shared
residency: everyone resident in both), else the one where only T was resident (exact
residency), else the first. A block is a repetition: in block r the tenant got the same
arrivals alone and co-located, so the two experiments of block r form a pair, wherever both
completed.

Every figure of ``INTERFERENCE_METRICS`` is analysed on the pairs (`reports.paired`:
geometric mean of the per-block ratios, t interval over the pairs, pooled variance when a
cell has few pairs, sign test where a ratio is infinite); the tail figures
(``reports.metrics.TAIL_METRICS``) are pooled p99s with a block bootstrap
(`reports.tails`) when the requests are at hand. ``slowdown`` turns every ratio into "how
much worse": the ratio itself for latencies, its inverse for throughput, goodput and SLO
attainment. Verdicts (`reports.verdicts`) are given to the headline figures, the family
the report tests and corrects for multiplicity; the other figures get their interval only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from reports.metrics import (
    HEADLINE_DECODER,
    HEADLINE_ENCODER,
    HIGHER_IS_BETTER,
    RATES,
    TAIL_METRICS,
    latency_columns,
)
from reports.paired import NO_TEST, CellEstimate, analyse_cells, log_ratios, two_sided_p
from reports.settings import ReportSettings
from reports.tails import TOO_FEW
from reports.verdicts import NOT_ESTABLISHED, adjust, blocks, classify, estimable

INTERFERENCE_METRICS = [m for m in RATES if m != "error_rate"] + latency_columns()

REASON_NO_BASELINE = "no isolated baseline"
REASON_NO_PAIRS = "no block where both arms completed"
REASON_TOO_FEW = TOO_FEW
REASON_OUTSIDE = "not in the tested family (interval only)"
REASON_UNDEFINED = "undefined: the figure is infinite (or zero) in both arms"

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
    "headline": pl.Boolean,
    "primary": pl.Boolean,
    "baseline_group_id": pl.Utf8,
    "n": pl.Int64,  # pairs (blocks) the estimate used
    "undefined": pl.Int64,  # pairs left out: both arms infinite (or zero)
    "mean": pl.Float64,  # arithmetic mean of the co-located figure over those blocks
    "baseline_mean": pl.Float64,
    "method": pl.Utf8,
    "ratio": pl.Float64,  # co-located / alone
    "ratio_lo": pl.Float64,
    "ratio_hi": pl.Float64,
    "slowdown": pl.Float64,  # how much worse: ratio, or 1 / ratio where higher is better
    "slowdown_lo": pl.Float64,
    "slowdown_hi": pl.Float64,
    "log_sd": pl.Float64,  # residual sd of the log ratios the interval used
    "df": pl.Float64,
    "mde": pl.Float64,  # minimum detectable effect (slowdown - 1), 80% power
    "p_hurts": pl.Float64,
    "p_well": pl.Float64,
    "p_value": pl.Float64,  # 2 x the smaller one-sided p
    "p_adjusted": pl.Float64,
    "in_family": pl.Boolean,
    "estimable": pl.Boolean,  # the interval's hi / lo is at most 4
    "verdict": pl.Utf8,  # hurts | shares well | not established (headline figures only)
    "reason": pl.Utf8,
    "batch_limit": pl.Boolean,  # the batch limit binds in either arm (reports.batch)
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


def block_pairs(exp: pl.DataFrame) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(co-located group, tenant) -> [(co-located experiment, alone experiment)], one per block
    where both arms completed, in block order."""
    base = baselines(exp)
    ids = {
        (r["group_id"], r["tenant"], r["repetition"]): r["experiment_id"]
        for r in exp.select("group_id", "tenant", "repetition", "experiment_id").iter_rows(named=True)
    }
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for (gid, t, rep), eid in sorted(ids.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        b = base.get((gid, t))
        if b is None or b == gid:
            continue
        alone = ids.get((b, t, rep))
        if alone is not None:
            out.setdefault((gid, t), []).append((eid, alone))
    return out


def _cells(exp: pl.DataFrame, metric: str, pairs: Mapping[tuple[str, str], list[tuple[str, str]]]
           ) -> tuple[dict[tuple[str, str], np.ndarray], dict[tuple[str, str], tuple[float, float]]]:
    """Slowdown log ratios per cell, and the arithmetic means of both arms over the pairs."""
    if metric not in exp.columns:
        return {}, {}
    value = {
        (r["experiment_id"], r["tenant"]): r[metric]
        for r in exp.select("experiment_id", "tenant", metric).iter_rows(named=True)
    }
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    cells, means = {}, {}
    for (gid, t), blocks_ in pairs.items():
        c = [value.get((ce, t)) for ce, _ in blocks_]
        a = [value.get((ae, t)) for _, ae in blocks_]
        keep = [(x, y) for x, y in zip(c, a, strict=True) if x is not None and y is not None]
        if not keep:
            continue
        cells[(gid, t)] = sign * log_ratios([x for x, _ in keep], [y for _, y in keep])
        means[(gid, t)] = (float(np.mean([x for x, _ in keep])), float(np.mean([y for _, y in keep])))
    return cells, means


def _exp(v: float | None) -> float | None:
    if v is None or math.isnan(v):
        return None
    return math.exp(v) if v < 700 else math.inf


def _estimate_columns(est: CellEstimate, invert: bool) -> dict[str, Any]:
    s, lo, hi = _exp(est.log_est), _exp(est.log_lo), _exp(est.log_hi)

    def inv(x: float | None) -> float | None:
        return None if x is None else (math.inf if x == 0 else 1.0 / x)

    ratio, r_lo, r_hi = (inv(s), inv(hi), inv(lo)) if invert else (s, lo, hi)
    return {
        "n": est.n, "undefined": est.undefined, "method": est.method,
        "ratio": ratio, "ratio_lo": r_lo, "ratio_hi": r_hi,
        "slowdown": s, "slowdown_lo": lo, "slowdown_hi": hi,
        "log_sd": est.sd, "df": est.df, "mde": est.mde,
        "p_hurts": est.p_hurts, "p_well": est.p_well, "p_value": two_sided_p(est),
        "estimable": estimable(lo, hi),
    }


def _base_row(r: dict[str, Any], tenant: str, metric: str, settings: ReportSettings) -> dict[str, Any]:
    kind = r["tenant_kind"]
    return {
        "group_id": r["group_id"], "active_set": r["active_set"], "resident_set": r["resident_set"],
        "rate_scale": r["rate_scale"], "n_active": r["n_active"], "tenant": tenant,
        "tenant_kind": kind,
        "co_tenants": "+".join(x for x in r["active_set"].split("+") if x != tenant),
        "metric": metric, "headline": metric in headline_metrics(kind),
        "primary": metric == settings.primary_figure(tenant, kind), "n": 0, "undefined": 0,
    }


def interference_table(
    exp: pl.DataFrame,
    settings: ReportSettings | None = None,
    tails: Mapping[tuple[str, str, str], CellEstimate] | None = None,
    metrics: Sequence[str] = INTERFERENCE_METRICS,
) -> pl.DataFrame:
    """Every co-located group x tenant x figure against the tenant alone, with verdicts.

    ``tails`` holds the pooled-p99 estimates of `reports.tails` (keyed group, tenant,
    metric); without it (tables only, no requests) the tail figures are analysed like the
    others, on the per-experiment p99s.
    """
    settings = settings or ReportSettings()
    base = baselines(exp)
    pairs = block_pairs(exp)
    meta = exp.filter(pl.col("colocated")).select(
        "group_id", "tenant", "tenant_kind", "active_set", "resident_set", "rate_scale", "n_active"
    ).unique(maintain_order=True)
    rows: list[dict[str, Any]] = []
    for metric in metrics:
        cells, means = _cells(exp, metric, pairs)
        ests: Mapping[Any, CellEstimate] = analyse_cells(
            cells, settings.level, settings.margin, settings.pool_variance)
        use_tails = tails is not None and metric in TAIL_METRICS
        for r in meta.iter_rows(named=True):
            key = (r["group_id"], r["tenant"])
            row = _base_row(r, r["tenant"], metric, settings)
            row["baseline_group_id"] = base.get(key)
            if key in means:
                row["mean"], row["baseline_mean"] = means[key]
            est = (tails or {}).get((*key, metric)) if use_tails else ests.get(key)
            if est is not None:
                row |= _estimate_columns(est, metric in HIGHER_IS_BETTER)
            rows.append(row)
    late = ("p_adjusted", "in_family", "verdict", "reason", "batch_limit")
    df = pl.DataFrame(rows, schema={k: v for k, v in SCHEMA.items() if k not in late}
                      ) if rows else pl.DataFrame(schema=SCHEMA)
    return apply_verdicts(df, settings) if rows else df


def apply_verdicts(df: pl.DataFrame, settings: ReportSettings) -> pl.DataFrame:
    """The family (headline figures with a test), its corrected p-values, and every verdict."""
    rows = df.to_dicts()
    fam = [i for i, r in enumerate(rows) if r["headline"] and r.get("p_value") is not None]
    adj = adjust([rows[i]["p_value"] for i in fam], settings.multiplicity)
    for i, p in zip(fam, adj, strict=True):
        rows[i]["p_adjusted"] = p
        rows[i]["in_family"] = True
    size = len(fam)
    for r in rows:
        r.setdefault("in_family", False)
        r.setdefault("batch_limit", False)
        r["verdict"], r["reason"] = _verdict(r, settings, size)
    return pl.DataFrame(rows, schema=SCHEMA)


def mark_batch_limit(inter: pl.DataFrame, flags: set[tuple[str, str]]) -> pl.DataFrame:
    """Set ``batch_limit`` on the rows of the (group, tenant) cells in ``flags``."""
    keys = [f"{g}\x00{t}" for g, t in flags]
    return inter.with_columns(
        (pl.col("group_id") + pl.lit("\x00") + pl.col("tenant")).is_in(keys).alias("batch_limit"))


def _verdict(r: dict[str, Any], settings: ReportSettings, family: int) -> tuple[str | None, str]:
    bound = f"{1 + settings.margin:g}"
    lo, hi = r.get("slowdown_lo"), r.get("slowdown_hi")
    if r.get("baseline_group_id") is None:
        why = REASON_NO_BASELINE
    elif not r.get("n"):
        why = REASON_UNDEFINED if r.get("undefined") else REASON_NO_PAIRS
    elif r.get("method") == TOO_FEW:
        why = f"{REASON_TOO_FEW} ({blocks(r['n'])}; a tail needs 5)"
    elif r.get("slowdown") is None and r.get("method") != NO_TEST:
        why = REASON_UNDEFINED
    elif r.get("method") == NO_TEST or lo is None or hi is None:
        why = f"no interval ({blocks(r['n'])})"
    elif not r["headline"]:
        return None, REASON_OUTSIDE
    else:
        plain = classify(lo, hi, settings.margin)
        if not r["in_family"]:
            return NOT_ESTABLISHED, "no test"
        rejected = r["p_adjusted"] is not None and r["p_adjusted"] < settings.alpha
        v = classify(lo, hi, settings.margin, rejected)
        if v != NOT_ESTABLISHED:
            return v, f"{settings.method_name}-corrected p = {r['p_adjusted']:.3g} across {family} figures"
        if plain != NOT_ESTABLISHED:
            return v, (f"the interval excludes {bound}, but not after {settings.method_name} "
                       f"correction across {family} figures (p = {r['p_adjusted']:.3g})")
        return v, f"the interval contains {bound}"
    return (NOT_ESTABLISHED if r["headline"] else None), why


def tenant_verdicts(inter: pl.DataFrame) -> pl.DataFrame:
    """Per co-located group x tenant: hurts if a headline figure hurts, shares well if all
    do, else not established."""
    from reports.verdicts import combine

    h = inter.filter(pl.col("headline"))
    if h.height == 0:
        return pl.DataFrame(schema={"group_id": pl.Utf8, "tenant": pl.Utf8, "tenant_verdict": pl.Utf8})
    g = h.group_by("group_id", "tenant", maintain_order=True).agg(pl.col("verdict"))
    return g.with_columns(
        pl.col("verdict").map_elements(lambda v: combine(list(v)), return_dtype=pl.Utf8)
        .alias("tenant_verdict")
    ).drop("verdict")


def worst_headline(inter: pl.DataFrame) -> pl.DataFrame:
    """Per group x tenant: the headline figure with the largest slowdown estimate (with its
    interval and verdict); figures without an estimate come last."""
    h = inter.filter(pl.col("headline"))
    if h.height == 0:
        return h
    return (
        h.sort(["slowdown"], descending=[True], nulls_last=True)
        .group_by("group_id", "tenant", maintain_order=True)
        .first()
    )


def pair_matrix(inter: pl.DataFrame) -> pl.DataFrame:
    """Victim x co-tenant for the pair experiments: the victim's verdict and its worst
    headline slowdown."""
    cols = ["rate_scale", "resident_set", "tenant", "co_tenants", "metric", "n", "slowdown",
            "slowdown_lo", "slowdown_hi", "estimable", "verdict", "reason"]
    pairs = inter.filter(pl.col("n_active") == 2)
    w = worst_headline(pairs)
    if w.height == 0:
        return pl.DataFrame(schema={c: SCHEMA[c] for c in cols} | {"tenant_verdict": pl.Utf8}).rename(
            {"tenant": "victim", "co_tenants": "co_tenant"})
    tv = tenant_verdicts(pairs)
    return (
        w.join(tv, on=["group_id", "tenant"], how="left")
        .select(*cols, "tenant_verdict")
        .rename({"tenant": "victim", "co_tenants": "co_tenant"})
        .sort("rate_scale", "victim", "co_tenant")
    )
