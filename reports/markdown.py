"""summary.md: the headline and the ranking for terminals and pull requests."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from reports.analysis import Analysis, analyze
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


def summary_markdown(analysis: Analysis | RunDir | str | Path) -> str:
    """The summary as Markdown: what was run, headline, ranking, failures, where the rest is."""
    a = analysis if isinstance(analysis, Analysis) else analyze(analysis)
    out = [f"# cotenant report: {a.run.name}", "", f"**What was run.** {what_was_run(a)}", "", "**Headline**", ""]
    out += [f"- {h}" for h in headlines(a)]
    rows = []
    for r in a.strategies.iter_rows(named=True):
        att = r["slo_attainment"]
        worst = fmt_ratio({"slowdown": r["worst_slowdown"], "slowdown_lo": r["worst_slowdown_lo"],
                           "slowdown_hi": r["worst_slowdown_hi"]})
        if r["worst_tenant"]:
            worst += f" {r['worst_tenant']} {label(r['worst_metric']).text}"
            if r["worst_significant"] is False:
                worst += " (n.s.)"
        rows.append([
            "" if r["rank"] is None else str(r["rank"]),
            set_name(r["active_set"]) + ("" if r["rate_scale"] == 1.0 else f" (x{r['rate_scale']:g})"),
            r["classification"],
            num(r["goodput_per_gpu_rps"]) + (" †" if r["too_wide_to_rank"] else ""),
            num(r["apart_goodput_per_gpu_rps"]),
            "–" if r["gain"] is None else f"{num(r['gain'], 3)}x",
            worst,
            "–" if att is None else f"{num(100 * att, 3)}%",
        ])
    out += ["", "## Strategy ranking", "",
            md_table(["#", "set", "verdict", "goodput/GPU (req/s)", "apart (req/s)", "gain",
                      "worst slowdown (95% CI)", "SLO attainment"], rows, right=(3, 4, 5)),
            "",
            "Goodput per GPU apart = sum of the tenants' isolated goodputs / number of tenants (one GPU each); "
            "gain = together / apart. Slowdown = co-located / alone (p99 latencies); n.s. = the 95% interval "
            "contains 1.0 (no measurable interference at this load). † = CI too wide to rank."]
    if a.matrix.height:
        out += ["", "## Pairs: victim x co-tenant", ""]
        out.append(md_table(
            ["victim", "co-tenant", "load", "worst figure", "slowdown (95% CI)", "reading"],
            [[r["victim"], r["co_tenant"], f"x{r['rate_scale']:g}", label(r["metric"]).text, fmt_ratio(r), r["verdict"]]
             for r in a.matrix.iter_rows(named=True)],
            right=(2,),
        ))
    out += explain_markdown(a.explanation)
    if a.failures.height:
        out += ["", "## Did not complete", ""]
        out += [f"- `{r['experiment_id']}`: {r['status']}" + (f" — {r['reason']}" if r["reason"] else "")
                for r in a.failures.iter_rows(named=True)]
    n_iso = a.strategies.filter(pl.col("n_active") == 1).height
    out += ["", f"Full report: `report.html` (sets, {n_iso} isolated baselines, figures, environment); "
            "tables in `tables/`, figures in `figures/`.", ""]
    return "\n".join(out)
