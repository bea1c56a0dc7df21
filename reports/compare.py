"""Two campaigns side by side (e.g. the same spec under time-slice and under MPS).

Experiments are matched by id (ids are stable for the same spec), so each set's repetitions
in run A meet the same set's repetitions in run B; every figure gets ``B / A`` with a 95%
interval (``stats.ratio_ci``). "Better in B" follows the figure's direction: lower latency,
higher throughput.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import polars as pl

from reports.analysis import Analysis, analyze
from reports.build import write_table
from reports.html import CSS, table
from reports.interference import INTERFERENCE_METRICS
from reports.markdown import md_table
from reports.metrics import HIGHER_IS_BETTER, label, num
from reports.narrative import machine
from reports.stats import ratio_ci
from rundir.ids import group_label
from rundir.io import atomic_write_text

KEY_METRICS = ("goodput_rps", "throughput_rps", "ttft_p99_s", "tpot_p99_s", "e2e_p50_s", "e2e_p99_s")

SCHEMA: dict[str, Any] = {
    "group_id": pl.Utf8,
    "tenant": pl.Utf8,
    "metric": pl.Utf8,
    "n_a": pl.Int64,
    "mean_a": pl.Float64,
    "n_b": pl.Int64,
    "mean_b": pl.Float64,
    "ratio_b_a": pl.Float64,
    "ratio_lo": pl.Float64,
    "ratio_hi": pl.Float64,
    "change": pl.Utf8,  # better in B | worse in B | no measurable change | no interval
}


def compare_table(a: Analysis, b: Analysis) -> pl.DataFrame:
    """Every (group, tenant, metric) present in both runs: B / A with its interval."""
    keys = ["group_id", "tenant", "metric"]
    sa = a.stats.filter(pl.col("metric").is_in(INTERFERENCE_METRICS)).select(*keys, "n", "mean", "sd")
    sb = b.stats.filter(pl.col("metric").is_in(INTERFERENCE_METRICS)).select(*keys, "n", "mean", "sd")
    j = sa.join(sb, on=keys, how="inner", suffix="_b")
    rows = []
    for r in j.iter_rows(named=True):
        ci = ratio_ci(r["mean_b"], r["sd_b"], r["n_b"], r["mean"], r["sd"], r["n"])
        if ci.ratio is None:
            change = "no ratio"
        elif ci.lo is None or ci.hi is None:
            change = "no interval"
        elif ci.lo <= 1.0 <= ci.hi:
            change = "no measurable change"
        else:
            up = ci.ratio > 1
            good = up == (r["metric"] in HIGHER_IS_BETTER)
            change = "better in B" if good else "worse in B"
        rows.append({
            "group_id": r["group_id"], "tenant": r["tenant"], "metric": r["metric"],
            "n_a": r["n"], "mean_a": r["mean"], "n_b": r["n_b"], "mean_b": r["mean_b"],
            "ratio_b_a": ci.ratio, "ratio_lo": ci.lo, "ratio_hi": ci.hi, "change": change,
        })
    return pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)


def strategies_side_by_side(a: Analysis, b: Analysis) -> pl.DataFrame:
    cols = ["group_id", "active_set", "rate_scale", "n_active", "goodput_per_gpu_rps", "gain",
            "worst_slowdown", "worst_significant", "slo_attainment", "classification"]
    sa = a.strategies.select(cols)
    sb = b.strategies.select([c for c in cols if c not in ("active_set", "rate_scale", "n_active")])
    return sa.join(sb, on="group_id", how="full", suffix="_b", coalesce=True)


def _label_change(change: str) -> str:
    cls = {"better in B": "better", "worse in B": "worse"}.get(change, "ns")
    return f'<span class="{cls}">{escape(change)}</span>'


def _ratio(r: dict[str, Any]) -> str:
    if r["ratio_b_a"] is None:
        return "–"
    txt = f"{num(r['ratio_b_a'], 3)}x"
    if r["ratio_lo"] is not None and r["ratio_hi"] is not None:
        txt += f" ({num(r['ratio_lo'], 3)}–{num(r['ratio_hi'], 3)})"
    return txt


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
    counts = {k: cmp.filter(pl.col("change") == k).height for k in ("better in B", "worse in B", "no measurable change")}
    heads = [
        f"A = {_side(a)}; B = {_side(b)}. {n_both} experiments in both, "
        f"{n_only_a} only in A, {n_only_b} only in B.",
        f"Of {cmp.height} figures matched (set x tenant x figure): {counts['better in B']} measurably better in B, "
        f"{counts['worse in B']} measurably worse in B, {counts['no measurable change']} without a measurable change "
        "(95% interval of B/A contains 1.0); the rest have one repetition on a side.",
    ]
    key = cmp.filter(pl.col("metric").is_in(KEY_METRICS) & pl.col("change").is_in(["better in B", "worse in B"]))
    if key.height:
        big = key.with_columns((pl.col("ratio_b_a").log().abs()).alias("_m")).sort("_m", descending=True).row(0, named=True)
        heads.append(
            f"Largest change on a headline figure: {big['tenant']} {label(big['metric']).text} in "
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
            escape(num(r["goodput_per_gpu_rps"])), escape(num(r["goodput_per_gpu_rps_b"])),
            escape("–" if r["gain"] is None else f"{num(r['gain'], 3)}x"),
            escape("–" if r["gain_b"] is None else f"{num(r['gain_b'], 3)}x"),
            escape("–" if r["worst_slowdown"] is None else f"{num(r['worst_slowdown'], 3)}x"),
            escape("–" if r["worst_slowdown_b"] is None else f"{num(r['worst_slowdown_b'], 3)}x"),
            escape(str(r["classification"] or "–")), escape(str(r["classification_b"] or "–")),
        ])
    krows = []
    for r in keyed.iter_rows(named=True):
        lab = label(r["metric"])
        krows.append([
            escape(group_label(r["group_id"])), escape(r["tenant"]), escape(lab.text),
            escape(f"{num(r['mean_a'] * lab.scale)} {lab.unit}"), escape(f"{num(r['mean_b'] * lab.scale)} {lab.unit}"),
            escape(_ratio(r)), _label_change(r["change"]),
        ])
    body = (
        '<div class="card summary"><ul>' + "".join(f"<li>{escape(h)}</li>" for h in heads) + "</ul></div>"
        "<h2>Sets: goodput per GPU, gain over running apart, worst slowdown</h2>"
        + table(["set", "goodput/GPU A", "goodput/GPU B", "gain A", "gain B", "worst slowdown A",
                 "worst slowdown B", "verdict A", "verdict B"], srows, numeric=(1, 2, 3, 4, 5, 6),
                attrs='id="compare-sets"')
        + "<h2>Headline figures, B / A</h2>"
        + table(["set", "tenant", "figure", "A", "B", "B / A (95% CI)", "change"], krows, numeric=(3, 4, 5),
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
