"""Two campaigns side by side (e.g. the same spec under time-slice and under MPS).

Experiments are matched by group (ids are stable for the same spec), so each set's blocks in
run A meet the same set's blocks in run B, and every figure gets ``B / A`` on the log scale.
Two campaigns are independent runs: unpaired by construction, so the interval is Welch's t
on the log figures over blocks (``stats.welch_log_ratio``). A figure that is infinite (a
censored percentile) or zero in some block gets no interval and is not established. Only where both campaigns used
the same order seed and the same experiment ids (a replay of the same arrivals) are the
blocks paired, and the interval is the paired t over ``log(B_r / A_r)``.

With run A's margin delta (``report.margin``): *worse in B* when the interval of B / A
(oriented so that above 1 is worse) lies above 1 + delta, *better in B* when it lies below
1 / (1 + delta), otherwise *not established*; the smaller of the two one-sided p-values,
doubled, is corrected across the headline figures compared (run A's
``report.multiplicity``), and a change needs the corrected test as well. An interval wider
than x4 is printed as "not estimable with n blocks", never as numbers.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import t as student_t

from reports.analysis import Analysis, analyze
from reports.build import write_table
from reports.htmlkit import CSS, badge, table
from reports.interference import INTERFERENCE_METRICS
from reports.markdown import md_table
from reports.metrics import HIGHER_IS_BETTER, label, num
from reports.narrative import machine
from reports.paired import PAIRED, t_estimate
from reports.stats import welch_log_ratio
from reports.verdicts import NOT_ESTABLISHED, adjust, blocks, ratio_text
from rundir.ids import group_label
from rundir.io import atomic_write_text

KEY_METRICS = ("goodput_rps", "throughput_rps", "tpot_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s")
BETTER, WORSE = "better in B", "worse in B"
WELCH = "Welch t on log figures (unpaired)"
CENSORED = "censored: a block's figure is infinite or zero"

SCHEMA: dict[str, Any] = {
    "group_id": pl.Utf8,
    "tenant": pl.Utf8,
    "metric": pl.Utf8,
    "n_a": pl.Int64,
    "mean_a": pl.Float64,
    "n_b": pl.Int64,
    "mean_b": pl.Float64,
    "method": pl.Utf8,
    "ratio_b_a": pl.Float64,
    "ratio_lo": pl.Float64,
    "ratio_hi": pl.Float64,
    "p_value": pl.Float64,
    "p_adjusted": pl.Float64,
    "change": pl.Utf8,  # better in B | worse in B | not established
    "reason": pl.Utf8,
}


def paired_runs(a: Analysis, b: Analysis) -> bool:
    """Both campaigns replayed the same arrivals: the same order seed and experiment ids."""
    def seed(x: Analysis) -> Any:
        c = x.run.campaign
        return c.get("order_seed", (x.run.spec.get("experiment") or {}).get("seed"))

    ids_a = {e.id for e in a.run.experiments}
    ids_b = {e.id for e in b.run.experiments}
    return seed(a) is not None and seed(a) == seed(b) and ids_a == ids_b and bool(ids_a)


def _values(x: Analysis, metric: str) -> dict[tuple[str, str], dict[int, float]]:
    out: dict[tuple[str, str], dict[int, float]] = {}
    if metric not in x.experiments.columns:
        return out
    for r in x.experiments.select("group_id", "tenant", "repetition", metric).iter_rows(named=True):
        if r[metric] is not None:
            out.setdefault((r["group_id"], r["tenant"]), {})[r["repetition"]] = float(r[metric])
    return out


def _estimate(va: dict[int, float], vb: dict[int, float], paired: bool, level: float,
              c: float) -> tuple[str, float | None, float | None, float | None, float | None]:
    """(method, log est, lo, hi, p two-sided against |log B/A| <= c) on the B / A scale."""
    if any(not math.isfinite(v) or v <= 0 for v in [*va.values(), *vb.values()]):
        return CENSORED, None, None, None, None
    if paired:
        reps = sorted(set(va) & set(vb))
        d = np.array([math.log(vb[r] / va[r]) for r in reps if va[r] > 0 and vb[r] > 0
                      and math.isfinite(va[r]) and math.isfinite(vb[r])])
        if d.size < 2:
            return PAIRED, (float(d.mean()) if d.size else None), None, None, None
        est = t_estimate(float(d.mean()), float(d.std(ddof=1)), int(d.size), d.size - 1, level, 0.0)
        m, lo, hi, df = est.log_est, est.log_lo, est.log_hi, est.df
        se: float | None = (est.sd or 0.0) / math.sqrt(d.size)
    else:
        w = welch_log_ratio(list(vb.values()), list(va.values()), level)
        m, lo, hi, se, df = w.log_est, w.log_lo, w.log_hi, w.se, w.df
        if lo is None:
            return WELCH, m, None, None, None
    assert m is not None and lo is not None and hi is not None and df is not None
    if not se:
        p = 0.0 if abs(m) > c else 1.0
    else:
        p_up = float(student_t.sf((m - c) / se, df))
        p_down = float(student_t.cdf((m + c) / se, df))
        p = min(1.0, 2 * min(p_up, p_down))
    return (PAIRED if paired else WELCH), m, lo, hi, p


def _exp(v: float | None) -> float | None:
    return None if v is None else math.exp(min(v, 700.0))


def compare_table(a: Analysis, b: Analysis) -> pl.DataFrame:
    """Every (group, tenant, figure) present in both runs: B / A with its interval and change."""
    st = a.settings
    paired = paired_runs(a, b)
    c = math.log1p(st.margin)
    rows: list[dict[str, Any]] = []
    for metric in INTERFERENCE_METRICS:
        ca, cb = _values(a, metric), _values(b, metric)
        for key in [k for k in ca if k in cb]:
            va, vb = ca[key], cb[key]
            method, m, lo, hi, p = _estimate(va, vb, paired, st.level, c)
            rows.append({
                "group_id": key[0], "tenant": key[1], "metric": metric,
                "n_a": len(va), "mean_a": float(np.mean(list(va.values()))),
                "n_b": len(vb), "mean_b": float(np.mean(list(vb.values()))),
                "method": method, "ratio_b_a": _exp(m), "ratio_lo": _exp(lo), "ratio_hi": _exp(hi),
                "p_value": p,
            })
    fam = [i for i, r in enumerate(rows) if r["metric"] in KEY_METRICS and r["p_value"] is not None]
    for i, q in zip(fam, adjust([rows[i]["p_value"] for i in fam], st.multiplicity), strict=True):
        rows[i]["p_adjusted"] = q
    for r in rows:
        r["change"], r["reason"] = _change(r, st.margin, st.alpha, st.method_name, len(fam))
    return pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)


def _change(r: dict[str, Any], margin: float, alpha: float, method: str, family: int) -> tuple[str, str]:
    lo, hi = r["ratio_lo"], r["ratio_hi"]
    n = min(r["n_a"], r["n_b"])
    if r["method"] == CENSORED:
        return NOT_ESTABLISHED, CENSORED
    if lo is None or hi is None:
        return NOT_ESTABLISHED, f"no interval ({blocks(n)} on the smaller side)"
    if r["metric"] not in KEY_METRICS:
        return NOT_ESTABLISHED, "not in the tested family (interval only)"
    up = r["metric"] not in HIGHER_IS_BETTER  # B / A above 1 is worse for latencies
    s_lo, s_hi = (lo, hi) if up else (1 / hi, 1 / lo if lo else math.inf)
    side = WORSE if s_lo > 1 + margin else (BETTER if s_hi < 1 / (1 + margin) else None)
    rejected = r.get("p_adjusted") is not None and r["p_adjusted"] < alpha
    if side and rejected:
        return side, f"{method}-corrected p = {r['p_adjusted']:.3g} across {family} figures"
    if side:
        return NOT_ESTABLISHED, f"the interval clears the margin, but not after {method} correction"
    return NOT_ESTABLISHED, f"the interval reaches within {num(100 * margin)}% of no change"


def strategies_side_by_side(a: Analysis, b: Analysis) -> pl.DataFrame:
    cols = ["group_id", "active_set", "rate_scale", "n_active", "repetitions", "goodput_rps",
            "worst_slowdown", "worst_slowdown_lo", "worst_slowdown_hi", "worst_n", "classification"]
    sa = a.strategies.select(cols)
    sb = b.strategies.select([c for c in cols if c not in ("active_set", "rate_scale", "n_active")])
    return sa.join(sb, on="group_id", how="full", suffix="_b", coalesce=True)


def _ratio(r: dict[str, Any]) -> str:
    return ratio_text(r["ratio_b_a"], r["ratio_lo"], r["ratio_hi"], min(r["n_a"], r["n_b"]))


def _worst(r: dict[str, Any], sfx: str = "") -> str:
    return ratio_text(r[f"worst_slowdown{sfx}"], r[f"worst_slowdown_lo{sfx}"], r[f"worst_slowdown_hi{sfx}"],
                      r[f"worst_n{sfx}"])


def _side(a: Analysis) -> str:
    return f"{a.run.name} ({a.run.sharing}, {machine(a)})"


def compare_runs(run_a: Path | str, run_b: Path | str, out_dir: Path | str) -> Path:
    """Write compare.html, compare.md and tables/compare*.parquet|csv; return compare.html."""
    a, b = analyze(run_a), analyze(run_b)
    out = Path(out_dir)
    cmp = compare_table(a, b)
    strat = strategies_side_by_side(a, b)
    ids_a = {e.id for e in a.run.completed}
    ids_b = {e.id for e in b.run.completed}
    only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)
    write_table(out / "tables", "compare", cmp)
    write_table(out / "tables", "compare_strategies", strat)
    heads = _headlines(a, b, cmp, len(ids_a & ids_b), len(only_a), len(only_b))
    keyed = _key_figures(a, cmp)
    html_path = out / "compare.html"
    atomic_write_text(html_path, _html(a, b, heads, strat, keyed, only_a, only_b))
    atomic_write_text(out / "compare.md", _markdown(a, b, heads, keyed))
    return html_path


def _headlines(
    a: Analysis, b: Analysis, cmp: pl.DataFrame, n_both: int, n_only_a: int, n_only_b: int
) -> list[str]:
    st = a.settings
    key = cmp.filter(pl.col("metric").is_in(KEY_METRICS))
    counts = {k: key.filter(pl.col("change") == k).height for k in (BETTER, WORSE, NOT_ESTABLISHED)}
    how = ("paired by block (same order seed and experiment ids)" if paired_runs(a, b)
           else "unpaired (independent campaigns): Welch t on the log figures over blocks")
    heads = [
        f"A = {_side(a)}; B = {_side(b)}. {n_both} experiments in both, "
        f"{n_only_a} only in A, {n_only_b} only in B. Intervals: {how}.",
        f"Of {key.height} headline figures matched (set x tenant x figure), tested with a margin of "
        f"{num(100 * st.margin)}% and {st.method_name} correction: {counts[BETTER]} better in B, "
        f"{counts[WORSE]} worse in B, {counts[NOT_ESTABLISHED]} not established.",
    ]
    est = key.filter(pl.col("change").is_in([BETTER, WORSE]))
    if est.height:
        big = est.with_columns(pl.col("ratio_b_a").log().abs().alias("_m")).sort("_m", descending=True).row(0, named=True)
        heads.append(
            f"Largest established change on a headline figure: {big['tenant']} {label(big['metric']).text} in "
            f"{group_label(big['group_id'])}: B/A = {_ratio(big)}, {big['change']}."
        )
    return heads


def _key_figures(a: Analysis, cmp: pl.DataFrame) -> pl.DataFrame:
    """The headline figures of the comparison, in A's order of sets and tenants."""
    order = {g: i for i, g in enumerate(a.set_order)}
    tenants = {t: i for i, t in enumerate(a.tenants)}
    return cmp.filter(pl.col("metric").is_in(KEY_METRICS)).with_columns(
        pl.col("group_id").replace_strict(order, default=len(order), return_dtype=pl.Int64).alias("_g"),
        pl.col("tenant").replace_strict(tenants, default=len(tenants), return_dtype=pl.Int64).alias("_t"),
        pl.col("metric").replace_strict({m: i for i, m in enumerate(KEY_METRICS)}, return_dtype=pl.Int64).alias("_m"),
    ).sort("_g", "_t", "_m").drop("_g", "_t", "_m")


def _html(
    a: Analysis, b: Analysis, heads: list[str], strat: pl.DataFrame, keyed: pl.DataFrame,
    only_a: list[str], only_b: list[str],
) -> str:  # fmt: skip
    srows = []
    for r in strat.iter_rows(named=True):
        srows.append([
            escape(group_label(r["group_id"])),
            escape(num(r["goodput_rps"])), escape(num(r["goodput_rps_b"])),
            escape(_worst(r) if r["worst_n"] is not None else "–"),
            escape(_worst(r, "_b") if r["worst_n_b"] is not None else "–"),
            badge(str(r["classification"] or "–")), badge(str(r["classification_b"] or "–")),
        ])
    krows = []
    for r in keyed.iter_rows(named=True):
        lab = label(r["metric"])
        krows.append([
            escape(group_label(r["group_id"])), escape(r["tenant"]), escape(lab.text),
            escape(f"{num(r['mean_a'] * lab.scale)} {lab.unit}"), escape(f"{num(r['mean_b'] * lab.scale)} {lab.unit}"),
            escape(_ratio(r)), badge(r["change"]), f'<span class="small">{escape(r["reason"])}</span>',
        ])
    body = (
        '<div class="card summary"><ul>' + "".join(f"<li>{escape(h)}</li>" for h in heads) + "</ul></div>"
        "<h2>Sets: goodput together, worst headline slowdown, verdict</h2>"
        + table(["set", "goodput A", "goodput B", "worst slowdown A (95% CI)", "worst slowdown B (95% CI)",
                 "verdict A", "verdict B"], srows, numeric=(1, 2), attrs='id="compare-sets"')
        + "<h2>Headline figures, B / A</h2>"
        + table(["set", "tenant", "figure", "A", "B", "B / A (95% CI)", "change", "why"], krows, numeric=(3, 4, 5),
                attrs='id="compare-table"')
        + ("<h2>Not matched</h2><p>Only in A: " + escape(", ".join(only_a) or "none") + "</p><p>Only in B: "
           + escape(", ".join(only_b) or "none") + "</p>")
        + "<p class=muted>Every figure: tables/compare.csv.</p>"
    )
    title = f"cotenant compare — {a.run.name} vs {b.run.name}"
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{CSS}</style></head><body><header class=top><div class=in><h1>{escape(title)}</h1>"
        f"<p>A: {escape(_side(a))}<br>B: {escape(_side(b))}</p></div></header><main>{body}</main></body></html>\n"
    )


def _markdown(a: Analysis, b: Analysis, heads: list[str], keyed: pl.DataFrame) -> str:
    md = [f"# cotenant compare: {a.run.name} (A) vs {b.run.name} (B)", ""] + [f"- {h}" for h in heads] + [
        "", md_table(["set", "tenant", "figure", "A", "B", "B / A (95% CI)", "change"],
                     [[group_label(r["group_id"]), r["tenant"], label(r["metric"]).text,
                       num(r["mean_a"] * label(r["metric"]).scale), num(r["mean_b"] * label(r["metric"]).scale),
                       _ratio(r), r["change"]] for r in keyed.iter_rows(named=True)],
                     right=(3, 4)), ""]
    return "\n".join(md)
