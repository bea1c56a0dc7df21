"""summary.md: the headline and the ranking for terminals and pull requests."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from reports.analysis import Analysis, analyze
from reports.capacity import CapacityRun, load_capacity
from reports.capacity_render import capacity_markdown
from reports.explain_render import explain_markdown
from reports.metrics import label, num
from reports.narrative import fmt_ratio, headlines, what_was_run
from reports.strategy import set_name
from rundir.reader import RunDir


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def md_table(headers: list[str], rows: list[list[str]], right: tuple[int, ...] = ()) -> str:
    sep = ["---:" if i in right else "---" for i in range(len(headers))]
    return "\n".join([_md_row(headers), "| " + " | ".join(sep) + " |"] + [_md_row(r) for r in rows])


def _strategy_rows(df: pl.DataFrame) -> list[list[str]]:
    rows = []
    for r in df.iter_rows(named=True):
        att, att0 = r["slo_attainment"], r["alone_slo_attainment"]
        worst = "–"
        if r["worst_tenant"]:
            worst = fmt_ratio({"slowdown": r["worst_slowdown"], "slowdown_lo": r["worst_slowdown_lo"],
                               "slowdown_hi": r["worst_slowdown_hi"], "n": r["worst_n"],
                               "method": r["worst_method"]})
            worst += f" {r['worst_tenant']} {label(r['worst_metric']).text}, n={r['worst_n']}"
        rows.append([
            "" if r["rank"] is None else str(r["rank"]),
            set_name(r["active_set"]) + ("" if r["rate_scale"] == 1.0 else f" (x{r['rate_scale']:g})"),
            r["classification"],
            worst,
            num(r["goodput_rps"]),
            ("–" if att is None else f"{num(100 * att, 3)}%")
            + ("" if att0 is None else f" (alone {num(100 * att0, 3)}%)"),
            r["batch_limit"] or "",
        ])
    return rows


HEADS = ["#", "set", "verdict", "worst headline slowdown (95% CI)", "goodput together (req/s)",
         "SLO attainment", "batch limit binds"]


def summary_markdown(analysis: Analysis | RunDir | str | Path, capacity: CapacityRun | None = None) -> str:
    """The summary as Markdown: what was run, capacity (when measured: ``capacity``, else read
    from the run directory), headline, ranking, failures, where the rest is."""
    a = analysis if isinstance(analysis, Analysis) else analyze(analysis)
    cap = capacity if capacity is not None else load_capacity(a.run)
    out = [f"# cotenant report: {a.run.name}", "", f"**What was run.** {what_was_run(a)}", ""]
    out += [] if cap is None else capacity_markdown(cap)
    out += ["**Headline**", ""]
    out += [f"- {h}" for h in headlines(a)]
    s = a.strategies
    ranked = s.filter(pl.col("rank").is_not_null())
    apart = s.filter(pl.col("rank").is_null() & (pl.col("n_active") > 1))
    out += ["", "## Strategy ranking (established sets only)", ""]
    out.append(md_table(HEADS, _strategy_rows(ranked), right=(4,)) if ranked.height
               else "No set is established yet, so none is ranked.")
    if apart.height:
        out += ["", "## Not established (not ranked)", "", md_table(HEADS, _strategy_rows(apart), right=(4,))]
    out += ["", "Slowdown = co-located / alone in the same block (geometric mean over "
            "blocks; alone / co-located for throughput and goodput); an interval wider than x4 reads "
            "\"not estimable with n blocks\"."]
    if a.matrix.height:
        out += ["", "## Pairs: victim x co-tenant", ""]
        out.append(md_table(
            ["victim", "co-tenant", "load", "victim's verdict", "worst figure", "slowdown (95% CI)", "n"],
            [[r["victim"], r["co_tenant"], f"x{r['rate_scale']:g}", r["tenant_verdict"] or "–",
              label(r["metric"]).text, fmt_ratio(r), str(r["n"])]
             for r in a.matrix.iter_rows(named=True)],
            right=(2, 6),
        ))
    if a.precision.height:
        done = int(a.precision["reached"].sum() or 0)
        out += ["", f"Precision target (log half-width {num(a.settings.precision_half_width)}): "
                f"{done} of {a.precision.height} primary figures reached it."]
    out += explain_markdown(a.explanation)
    if a.failures.height:
        out += ["", "## Did not complete", ""]
        out += [f"- `{r['experiment_id']}`: {r['status']}" + (f" — {r['reason']}" if r["reason"] else "")
                for r in a.failures.iter_rows(named=True)]
    n_iso = a.strategies.filter(pl.col("n_active") == 1).height
    out += ["", f"Full report: `report.html` (sets, {n_iso} isolated baselines, every headline figure, "
            "figures, environment); tables in `tables/`, figures in `figures/`.", ""]
    return "\n".join(out)
