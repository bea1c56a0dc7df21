"""Strategy ranking: which sets of tenants share a GPU well.

For each group (resident set x active set x rate scale):

* goodput per GPU: the sum of the active tenants' goodput (mean over repetitions); the
  set runs on one GPU.
* running them apart: each active tenant alone on a GPU of its own (its isolated group at
  the same rate scale), so ``sum of the isolated goodputs / number of tenants`` per GPU.
* gain = goodput per GPU together / goodput per GPU apart: 2.0 for two tenants that keep
  all of their goodput when they share, 1.0 when sharing buys nothing.
* worst slowdown: the largest slowdown (co-located / alone, reports.interference) over the
  active tenants' headline latencies (p99 TTFT, TPOT and E2E of decoders; p99 E2E of the
  encoder) whose interval confirms it (lies above 1.0); where none is confirmed, the largest
  point estimate, flagged as not measurable.
* SLO attainment: requests that met every SLO / requests, pooled over tenants and
  repetitions; next to the same tenants' attainment alone.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from reports.interference import VERDICT_NONE, baselines, worst_headline
from reports.metrics import label, num

# a set "hurts" when a tenant's headline latency gets this much worse (and the CI says so),
# or when SLO attainment drops by this many points compared with the tenants alone
HURT_SLOWDOWN = 1.25
HURT_ATTAINMENT_DROP = 0.05

CLASS_BASELINE = "baseline"
CLASS_WELL = "shares well"
CLASS_MILD = "mild interference"
CLASS_HURTS = "hurts"
CLASS_UNKNOWN = "not measurable"

SCHEMA: dict[str, Any] = {
    "rank": pl.Int64,
    "group_id": pl.Utf8,
    "active_set": pl.Utf8,
    "resident_set": pl.Utf8,
    "rate_scale": pl.Float64,
    "n_active": pl.Int64,
    "repetitions": pl.Int64,
    "goodput_per_gpu_rps": pl.Float64,
    "goodput_half_width": pl.Float64,
    "apart_goodput_per_gpu_rps": pl.Float64,
    "gain": pl.Float64,
    "slo_attainment": pl.Float64,
    "apart_slo_attainment": pl.Float64,
    "worst_tenant": pl.Utf8,
    "worst_metric": pl.Utf8,
    "worst_slowdown": pl.Float64,
    "worst_slowdown_lo": pl.Float64,
    "worst_slowdown_hi": pl.Float64,
    "worst_significant": pl.Boolean,
    "too_wide_to_rank": pl.Boolean,
    "classification": pl.Utf8,
    "verdict": pl.Utf8,
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


def strategy_table(exp: pl.DataFrame, stats: pl.DataFrame, inter: pl.DataFrame) -> pl.DataFrame:
    """One row per group: co-located sets ranked (classification, then gain, then worst
    slowdown), the isolated baselines after them without a rank."""
    base = baselines(exp)
    good = {
        (r["group_id"], r["tenant"]): r
        for r in stats.filter(pl.col("metric") == "goodput_rps").iter_rows(named=True)
    }
    worst = worst_headline(inter)
    reps = exp.group_by("group_id").agg(pl.col("repetition").n_unique().alias("reps"))
    nrep = dict(zip(reps["group_id"].to_list(), reps["reps"].to_list(), strict=True))
    rows: list[dict[str, Any]] = []
    meta = exp.select("group_id", "active_set", "resident_set", "n_active", "rate_scale").unique(
        maintain_order=True
    )
    for g in meta.iter_rows(named=True):
        gid = g["group_id"]
        tenants = g["active_set"].split("+")
        row: dict[str, Any] = dict(g) | {"repetitions": nrep.get(gid, 0)}
        gs = [good.get((gid, t)) for t in tenants]
        if all(x is not None and x["mean"] is not None for x in gs):
            row["goodput_per_gpu_rps"] = sum(x["mean"] for x in gs if x)
            hws = [x["half_width"] for x in gs if x]
            row["goodput_half_width"] = (
                math.sqrt(sum(h * h for h in hws)) if all(h is not None for h in hws) else None
            )
            row["too_wide_to_rank"] = any(bool(x["too_wide"]) for x in gs if x)
        iso = [(base.get((gid, t)), t) for t in tenants]
        iso_g = [good.get((b, t)) if b else None for b, t in iso]
        if all(x is not None and x["mean"] is not None for x in iso_g):
            apart = sum(x["mean"] for x in iso_g if x) / len(tenants)
            row["apart_goodput_per_gpu_rps"] = apart
            if apart > 0 and row.get("goodput_per_gpu_rps") is not None:
                row["gain"] = row["goodput_per_gpu_rps"] / apart
        row["slo_attainment"] = _pooled_attainment(exp, [(gid, t) for t in tenants])
        row["apart_slo_attainment"] = _pooled_attainment(exp, [(b, t) for b, t in iso if b])
        if g["n_active"] > 1 and worst.height:
            confirmed = (pl.col("significant").fill_null(False) & (pl.col("slowdown") > 1)).alias("_c")
            w = (
                worst.filter(pl.col("group_id") == gid)
                .with_columns(confirmed)
                .sort(["_c", "slowdown"], descending=[True, True])
            )
            if w.height:
                top = w.row(0, named=True)
                row |= {
                    "worst_tenant": top["tenant"],
                    "worst_metric": top["metric"],
                    "worst_slowdown": top["slowdown"],
                    "worst_slowdown_lo": top["slowdown_lo"],
                    "worst_slowdown_hi": top["slowdown_hi"],
                    "worst_significant": top["significant"],
                }
        row["classification"] = classify(row)
        row["verdict"] = verdict(row)
        rows.append(row)
    if not rows:
        return pl.DataFrame(schema=SCHEMA)
    df = pl.DataFrame(rows, schema={k: v for k, v in SCHEMA.items() if k != "rank"})
    order = {CLASS_WELL: 0, CLASS_MILD: 1, CLASS_UNKNOWN: 2, CLASS_HURTS: 3, CLASS_BASELINE: 4}
    df = df.with_columns(
        pl.col("classification").replace_strict(order, default=5, return_dtype=pl.Int64).alias("_c"),
        (pl.col("n_active") == 1).alias("_iso"),
    ).sort(
        ["_iso", "_c", "gain", "worst_slowdown"],
        descending=[False, False, True, False],
        nulls_last=True,
    )
    df = df.with_columns(
        pl.when(~pl.col("_iso")).then(pl.int_range(1, pl.len() + 1)).otherwise(None).alias("rank")
    ).drop("_c", "_iso")
    return df.select(list(SCHEMA)).cast(SCHEMA)  # type: ignore[arg-type]


def classify(row: dict[str, Any]) -> str:
    if row["n_active"] == 1:
        return CLASS_BASELINE
    s = row.get("worst_slowdown")
    att, att0 = row.get("slo_attainment"), row.get("apart_slo_attainment")
    drop = (att0 - att) if att is not None and att0 is not None else 0.0
    if s is None:
        return CLASS_UNKNOWN
    sig = row.get("worst_significant")
    if (sig and s >= HURT_SLOWDOWN) or drop > HURT_ATTAINMENT_DROP:
        return CLASS_HURTS
    if sig is None:  # one repetition: only a slowdown past the threshold is taken at face value
        return CLASS_HURTS if s >= HURT_SLOWDOWN else CLASS_UNKNOWN
    if sig and s > 1.0:
        return CLASS_MILD
    return CLASS_WELL


def set_name(active_set: str) -> str:
    return " + ".join(active_set.split("+"))


def verdict(row: dict[str, Any]) -> str:
    """One plain sentence, e.g. "a + b: 1.9x the goodput of running them apart, worst ..."."""
    name = set_name(row["active_set"])
    scale = "" if row["rate_scale"] == 1.0 else f" at load x{row['rate_scale']:g}"
    if row["n_active"] == 1:
        g = row.get("goodput_per_gpu_rps")
        return f"{name} alone{scale}: baseline, goodput {num(g)} req/s"
    parts = [f"{name}{scale}:"]
    gain = row.get("gain")
    parts.append(
        f"{num(gain, 2)}x the goodput of running them apart"
        if gain is not None
        else "no isolated baseline for every tenant, so no gain"
    )
    s = row.get("worst_slowdown")
    if s is None:
        return " ".join(parts) + "; no slowdown figure (a tenant lacks its isolated baseline)"
    lab = label(row["worst_metric"]).text
    txt = f", worst slowdown {num(s, 3)}x on {row['worst_tenant']} {lab}"
    lo, hi = row.get("worst_slowdown_lo"), row.get("worst_slowdown_hi")
    if lo is not None and hi is not None:
        txt += f" (95% CI {num(lo, 3)}–{num(hi, 3)})"
    parts[-1] += txt
    att = row.get("slo_attainment")
    if att is not None:
        parts[-1] += f", SLO attainment {num(100 * att, 3)}%"
        att0 = row.get("apart_slo_attainment")
        if att0 is not None:
            parts[-1] += f" (alone {num(100 * att0, 3)}%)"
    out = " ".join(parts)
    sig = row.get("worst_significant")
    if sig is None:
        out += (
            "; one repetition, so no interval: run at least 3 repetitions before ranking on this"
        )
    elif not sig and classify(row) == CLASS_HURTS:
        # it hurts through SLO attainment, not through a slowdown the interval can confirm
        out += (
            "; it hurts through SLO attainment: the latency slowdown itself is not measurable "
            "at this load (its interval contains 1.0)"
        )
    elif not sig:
        out += (
            f"; {VERDICT_NONE} at this load (the interval contains 1.0): "
            "more repetitions or a higher rate would tell"
        )
    return out
