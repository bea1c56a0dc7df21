"""Strategy ranking: which sets of tenants share a GPU well, as far as the data establishes.

For each group (resident set x active set x rate scale):

* set verdict (`reports.verdicts`): *hurts* if any tenant's headline figure hurts; *shares
  well* if every tenant's headline figures share well; otherwise *not established*. The
  headline figures are the family the report tests, with the multiplicity correction.
* worst slowdown: the headline figure with the largest slowdown estimate among the set's
  tenants, with its interval (or "not estimable with n blocks") and n. It orders sets within
  a verdict; adjacent ranks are not tested against each other.
* ranking: only established sets are ranked, those that share well first, those that hurt
  last, each class by its worst slowdown (smallest first). Sets not established are listed
  apart and never ranked; the tenants alone are the baselines.
* goodput together and SLO attainment (requests that met every SLO / requests, pooled over
  tenants and blocks, next to the same tenants alone) are descriptive: no verdict uses them.
* batch limit: a tenant whose rate needs more requests in flight than its ``max_num_seqs``
  (`reports.batch`) measures the configuration, not the GPU; the set says so.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from reports.interference import baselines, worst_headline
from reports.metrics import label, num
from reports.tails import TOO_FEW
from reports.verdicts import HURTS, NOT_ESTABLISHED, WELL, blocks, combine, ratio_text

CLASS_BASELINE = "baseline"
CLASS_WELL = WELL
CLASS_HURTS = HURTS
CLASS_UNKNOWN = NOT_ESTABLISHED

SCHEMA: dict[str, Any] = {
    "rank": pl.Int64,
    "group_id": pl.Utf8,
    "active_set": pl.Utf8,
    "resident_set": pl.Utf8,
    "rate_scale": pl.Float64,
    "n_active": pl.Int64,
    "repetitions": pl.Int64,
    "goodput_rps": pl.Float64,  # the set's goodput together (sum of the tenants' means)
    "slo_attainment": pl.Float64,
    "alone_slo_attainment": pl.Float64,
    "worst_tenant": pl.Utf8,
    "worst_metric": pl.Utf8,
    "worst_n": pl.Int64,
    "worst_slowdown": pl.Float64,
    "worst_slowdown_lo": pl.Float64,
    "worst_slowdown_hi": pl.Float64,
    "worst_estimable": pl.Boolean,
    "worst_method": pl.Utf8,
    "headline_figures": pl.Int64,
    "hurts_figures": pl.Int64,
    "well_figures": pl.Int64,
    "batch_limit": pl.Utf8,  # tenants whose batch limit binds, comma separated
    "established": pl.Boolean,
    "classification": pl.Utf8,  # baseline | shares well | hurts | not established
    "verdict": pl.Utf8,  # one plain sentence
}


def _pooled_attainment(exp: pl.DataFrame, pairs: list[tuple[str, str]]) -> float | None:
    if not pairs:
        return None
    sel = exp.join(
        pl.DataFrame(pairs, schema={"group_id": pl.Utf8, "tenant": pl.Utf8}, orient="row"),
        on=["group_id", "tenant"],
    )
    req = int(sel["requests"].sum() or 0)
    return None if req == 0 else float(sel["met"].sum() or 0) / req


def _worst(inter: pl.DataFrame, gid: str) -> dict[str, Any]:
    w = worst_headline(inter.filter(pl.col("group_id") == gid))
    if w.height == 0:
        return {}
    top = w.sort("slowdown", descending=True, nulls_last=True).row(0, named=True)
    return {
        "worst_tenant": top["tenant"], "worst_metric": top["metric"], "worst_n": top["n"],
        "worst_slowdown": top["slowdown"], "worst_slowdown_lo": top["slowdown_lo"],
        "worst_slowdown_hi": top["slowdown_hi"], "worst_estimable": top["estimable"],
        "worst_method": top["method"],
    }


def strategy_table(exp: pl.DataFrame, stats: pl.DataFrame, inter: pl.DataFrame,
                   batch_flags: set[tuple[str, str]] | None = None) -> pl.DataFrame:
    """One row per group: established co-located sets ranked, the others apart, baselines last."""
    base = baselines(exp)
    good = {
        (r["group_id"], r["tenant"]): r["mean"]
        for r in stats.filter(pl.col("metric") == "goodput_rps").iter_rows(named=True)
    }
    reps = exp.group_by("group_id").agg(pl.col("repetition").n_unique().alias("reps"))
    nrep = dict(zip(reps["group_id"].to_list(), reps["reps"].to_list(), strict=True))
    flags = batch_flags or set()
    rows: list[dict[str, Any]] = []
    for g in exp.select("group_id", "active_set", "resident_set", "n_active", "rate_scale").unique(
        maintain_order=True
    ).iter_rows(named=True):
        gid = g["group_id"]
        tenants = g["active_set"].split("+")
        row: dict[str, Any] = dict(g) | {"repetitions": nrep.get(gid, 0)}
        gs = [good.get((gid, t)) for t in tenants]
        row["goodput_rps"] = sum(x for x in gs if x is not None) if all(x is not None for x in gs) else None
        row["slo_attainment"] = _pooled_attainment(exp, [(gid, t) for t in tenants])
        iso = [(base[(gid, t)], t) for t in tenants if (gid, t) in base]
        row["batch_limit"] = ", ".join(t for t in tenants if (gid, t) in flags) or None
        if g["n_active"] == 1:
            row["classification"] = CLASS_BASELINE
        else:
            row["alone_slo_attainment"] = _pooled_attainment(exp, iso)
            h = inter.filter((pl.col("group_id") == gid) & pl.col("headline"))
            verdicts = h["verdict"].to_list()
            missing = [t for t in tenants if (gid, t) not in base]
            row["classification"] = NOT_ESTABLISHED if missing else combine(verdicts)
            row["headline_figures"] = h.height
            row["hurts_figures"] = verdicts.count(HURTS)
            row["well_figures"] = verdicts.count(WELL)
            row |= _worst(inter, gid)
            row["_why"] = _why_not(h, missing)
        row["established"] = row["classification"] in (CLASS_WELL, CLASS_HURTS)
        row["verdict"] = verdict(row)
        rows.append(row)
    if not rows:
        return pl.DataFrame(schema=SCHEMA)
    for r in rows:
        r.pop("_why", None)
    return rank(pl.DataFrame(rows, schema={k: v for k, v in SCHEMA.items() if k != "rank"}))


def rank(df: pl.DataFrame) -> pl.DataFrame:
    """Established sets ranked (shares well, then hurts; each by worst slowdown); the sets
    not established after them without a rank, then the baselines."""
    order = {CLASS_WELL: 0, CLASS_HURTS: 1, CLASS_UNKNOWN: 2, CLASS_BASELINE: 3}
    df = df.with_columns(
        pl.col("classification").replace_strict(order, default=4, return_dtype=pl.Int64).alias("_c")
    ).sort(["_c", "worst_slowdown"], descending=[False, False], nulls_last=True)
    # established sets sort first, so their ranks run 1..k
    df = df.with_columns(
        pl.when(pl.col("established")).then(pl.int_range(1, pl.len() + 1)).otherwise(None).alias("rank")
    ).drop("_c")
    return df.select(list(SCHEMA)).cast(SCHEMA)  # type: ignore[arg-type]


def _why_not(h: pl.DataFrame, missing: list[str]) -> str:
    if missing:
        return f"no isolated baseline for {', '.join(missing)}"
    pend = h.filter(pl.col("verdict") == NOT_ESTABLISHED)
    if pend.height == 0:
        return ""
    first = pend.row(0, named=True)
    more = f" (and {pend.height - 1} more figure{'s' if pend.height > 2 else ''})" if pend.height > 1 else ""
    return f"{first['tenant']} {label(first['metric']).text}: {first['reason']}{more}"


def set_name(active_set: str) -> str:
    return " + ".join(active_set.split("+"))


def verdict(row: dict[str, Any]) -> str:
    """One plain sentence, e.g. "a + b: hurts — worst slowdown 1.9x on a TPOT p50 (...)"."""
    name = set_name(row["active_set"])
    scale = "" if row["rate_scale"] == 1.0 else f" at load x{row['rate_scale']:g}"
    n = row.get("repetitions")
    if row["n_active"] == 1:
        return f"{name} alone{scale}: baseline, goodput {num(row.get('goodput_rps'))} req/s ({blocks(n)})"
    cls = row["classification"]
    out = f"{name}{scale}: {cls}"
    if row.get("worst_metric"):
        why = TOO_FEW if row.get("worst_method") == TOO_FEW else None
        ratio = ratio_text(row.get("worst_slowdown"), row.get("worst_slowdown_lo"),
                           row.get("worst_slowdown_hi"), row.get("worst_n"), why=why)
        out += (f" — worst headline slowdown {ratio} on {row['worst_tenant']} "
                f"{label(row['worst_metric']).text}")
    if cls == CLASS_HURTS:
        out += f"; {row.get('hurts_figures')} of {row.get('headline_figures')} headline figures hurt"
    elif cls == CLASS_WELL:
        out += f"; all {row.get('headline_figures')} headline figures share well"
    elif row.get("_why"):
        out += f"; not established: {row['_why']}"
    att, att0 = row.get("slo_attainment"), row.get("alone_slo_attainment")
    if att is not None:
        out += f"; SLO attainment {num(100 * att, 3)}%"
        if att0 is not None:
            out += f" (alone {num(100 * att0, 3)}%)"
    if row.get("batch_limit"):
        out += f"; {row['batch_limit']}: batch limit binds, this measures the configuration, not the GPU"
    return out
